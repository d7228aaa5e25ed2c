//! A real browser for the dashboard tests: headless Chromium driven through chromedriver's
//! WebDriver protocol (W3C), plain JSON over HTTP with the tests' own client.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::{free_port, Http, KillOnDrop, Reply};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: Http,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: KillOnDrop,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` x `height`. Panics with what to
    /// install when either is missing: these tests never skip.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port("127.0.0.1");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e} (apt-get install chromium chromium-driver)")
            });
        let driver = KillOnDrop(driver);
        let base = format!("http://127.0.0.1:{port}");
        let http = Http::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(&format!("{base}/status")).await.ok();
            if ready.is_some_and(|r| r.json()["value"]["ready"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("no chromium binary (apt-get install chromium)");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", format!("--window-size={width},{height}")],
            },
        }}});
        let r = http
            .send("POST", &format!("{base}/session"), &[], caps.to_string())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "new session: {}", r.text());
        let id = r.json()["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let r = self.try_call(method, path, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    async fn try_call(&self, method: &str, path: &str, body: Value) -> Reply {
        let url = format!("{}{path}", self.session);
        let body = match method {
            "GET" | "DELETE" => String::new(),
            _ => body.to_string(),
        };
        self.http.send(method, &url, &[], body).await.unwrap()
    }

    /// Does `action` (`click`, `value`) on the element `css` selects, finding it again when
    /// the page's live updates replaced it between the finding and the action.
    async fn act(&self, css: &str, action: &str, body: Value) {
        for _ in 0..20 {
            let e = self.find(css).await;
            let path = format!("/element/{e}/{action}");
            let r = self.try_call("POST", &path, body.clone()).await;
            if r.json()["value"]["error"] == "stale element reference" {
                continue;
            }
            assert_eq!(r.status, 200, "POST {path}: {}", r.text());
            return;
        }
        panic!("{css} was replaced 20 times over before it could be used");
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element `css` selects; panics when there is none.
    pub async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    pub async fn click(&self, css: &str) {
        self.act(css, "click", json!({})).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.act(css, "value", json!({ "text": text })).await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// The text of the first element `css` selects; None when there is none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let css = serde_json::to_string(css).unwrap();
        let v = self
            .eval(&format!(
                "const e = document.querySelector({css}); return e ? e.textContent : null;"
            ))
            .await;
        v.as_str().map(str::to_string)
    }

    /// Waits until `css` selects an element whose text satisfies `ok`; its text, and how long
    /// it took. Polls the page every 20 ms: the page itself changes by its own live updates.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            if let Some(t) = self.text(css).await.filter(|t| ok(t)) {
                return (t, start.elapsed());
            }
            if start.elapsed() > limit {
                let now = self.text(css).await;
                panic!("{css} did not come as expected within {limit:?}; it reads {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Makes the page see `prefers-color-scheme: <scheme>` (`dark`, `light`), through
    /// chromedriver's DevTools passthrough.
    pub async fn color_scheme(&self, scheme: &str) {
        let features = json!([{"name": "prefers-color-scheme", "value": scheme}]);
        self.call(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": features}}),
        )
        .await;
    }

    /// Saves what the window shows as a PNG.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium; chromedriver is killed after.
        let url = self.session.clone();
        // A client of its own: the test's runtime may be going away.
        let _ = std::thread::spawn(move || {
            let http = Http::default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        http.send("DELETE", &url, &[], ""),
                    )
                    .await;
                });
            }
        })
        .join();
    }
}
