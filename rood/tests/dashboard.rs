//! The dashboard at `/ui/`: its login and sessions over HTTP, and, in headless Chromium against
//! a 3-node cluster, what an on-call person does with it.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{wait_for, Http, Proc, TestCa};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-the-dashboard";
const READ: &str = "read-token-for-the-dashboard";

fn token_args() -> Vec<&'static str> {
    vec!["--api-token", ADMIN, "--api-read-token", READ]
}

/// `POST /ui/login` with `token`; the session cookie (`roo_session=...`) and the Set-Cookie line.
async fn login(http: &Http, api: &str, token: &str) -> (String, String) {
    let r = http
        .send(
            "POST",
            &format!("http://{api}/ui/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("token={token}"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/ui/");
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    (cookie, set)
}

async fn page(http: &Http, url: &str, cookie: &str) -> common::Reply {
    http.send("GET", url, &[("cookie", cookie)], "")
        .await
        .unwrap()
}

async fn post_form(http: &Http, url: &str, cookie: &str, form: &str) -> common::Reply {
    http.send(
        "POST",
        url,
        &[
            ("cookie", cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        form.to_string(),
    )
    .await
    .unwrap()
}

/// The CSRF token in a page's forms.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn frozen(http: &Http, api: &str, name: &str) -> bool {
    common::listed_route(http, api, name).await["state"] == "frozen"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_sessions_and_csrf_tokens_decide_who_sees_and_acts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port("127.0.0.1");
    let api = format!("127.0.0.1:{port}");
    let mut args = token_args();
    args.extend(["--ui-session-s", "4"]);
    let node = Proc::start(&api, &dir.path().join("n1"), &args);
    let http = Http::default();
    common::wait_for_cluster(&http, std::slice::from_ref(&node.addr), 1).await;
    let base = format!("http://{api}");
    let admin = [("authorization", format!("Bearer {ADMIN}"))];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let name = "shop.test:http";
    let mut revs = Vec::new();
    for value in ["http://127.0.0.1:9", "http://127.0.0.1:10"] {
        let url = format!("{base}/roo/v1/kv/com.roo.host:{name}");
        let r = http.send("PUT", &url, &admin, value).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        revs.push(r.json()["rev"].as_u64().unwrap());
    }
    let ca = TestCa::new("dashboard test CA");
    let (cert, _) = ca.stored(&["shop.test"]);
    assert!(cert.contains("PRIVATE KEY"));
    let r = http
        .send(
            "PUT",
            &format!("{base}/roo/v1/kv/com.roo.cert:shop.test"),
            &admin,
            cert,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 0..101 {
        let url = format!("{base}/roo/v1/kv/com.roo.host:page-{i:03}.test:http");
        let r = http
            .send("PUT", &url, &admin, "http://127.0.0.1:9")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // No session: pages send to the login, the stream and actions are refused.
    let r = http.get(&format!("{base}/ui/routes")).await.unwrap();
    assert_eq!(
        (r.status, &r.headers["location"]),
        (303, &"/ui/login".parse().unwrap())
    );
    let r = http.get(&format!("{base}/ui/live")).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let freeze = format!("{base}/ui/routes/{name}/freeze");
    let r = post_form(&http, &freeze, "", "csrf=x").await;
    assert_eq!(r.status, 401, "{}", r.text());
    // A made-up session is no session.
    let r = page(
        &http,
        &format!("{base}/ui/"),
        "roo_session=0123456789abcdef",
    )
    .await;
    assert_eq!(r.status, 303);
    let login_page = http.get(&format!("{base}/ui/login")).await.unwrap();
    assert_eq!(login_page.status, 200);
    assert!(login_page.text().contains("name=\"token\""));
    let r = http
        .send(
            "POST",
            &format!("{base}/ui/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            "token=wrong",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.headers.get("set-cookie").is_none());

    // The read token: every page, no private key, no action.
    let (reader, set) = login(&http, &api, READ).await;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=4"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    for path in ["/ui/", "/ui/routes", "/ui/certs", "/ui/events"] {
        let r = page(&http, &format!("{base}{path}"), &reader).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let text = r.text();
        assert!(!text.contains("PRIVATE KEY"), "{path} shows a private key");
        assert!(text.contains("read only"), "{path} names the role");
    }
    let routes = page(&http, &format!("{base}/ui/routes?q=shop"), &reader).await;
    assert!(routes.text().contains(&format!("data-route=\"{name}\"")));
    let none = page(
        &http,
        &format!("{base}/ui/routes?q=nothing-like-it"),
        &reader,
    )
    .await;
    assert!(!none.text().contains("data-route="));
    let certs = page(&http, &format!("{base}/ui/certs"), &reader)
        .await
        .text();
    assert!(certs.contains("data-host=\"shop.test\"") && certs.contains("dashboard test CA"));
    let route_page = page(&http, &format!("{base}/ui/routes/{name}"), &reader).await;
    let read_csrf = csrf(&route_page.text());
    let r = post_form(&http, &freeze, &reader, &format!("csrf={read_csrf}")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("read token cannot act"), "{}", r.text());
    assert!(!frozen(&http, &api, name).await);

    // The admin token: the CSRF token of its own session, or nothing.
    let (admin_cookie, _) = login(&http, &api, ADMIN).await;
    for form in [String::new(), "csrf=".into(), format!("csrf={read_csrf}")] {
        let r = post_form(&http, &freeze, &admin_cookie, &form).await;
        assert_eq!(r.status, 403, "{form}");
        assert!(r.text().contains("CSRF"), "{}", r.text());
    }
    assert!(!frozen(&http, &api, name).await);
    let route_page = page(&http, &format!("{base}/ui/routes/{name}"), &admin_cookie).await;
    let admin_csrf = csrf(&route_page.text());
    let r = post_form(&http, &freeze, &admin_cookie, &format!("csrf={admin_csrf}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("is frozen"), "{}", r.text());
    assert!(frozen(&http, &api, name).await);
    let events = common::events(&http, &api, "?type=route.frozen").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["source"], "api:admin");

    // A rollback from the history: refused while frozen, with why; done once unfrozen.
    let rollback = format!("{base}/ui/routes/{name}/rollback");
    let form = format!("csrf={admin_csrf}&rev={}", revs[0]);
    let r = post_form(&http, &rollback, &admin_cookie, &form).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("is frozen"), "{}", r.text());
    let r = post_form(
        &http,
        &format!("{base}/ui/routes/{name}/unfreeze"),
        &admin_cookie,
        &format!("csrf={admin_csrf}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("no longer frozen"), "{}", r.text());
    let r = post_form(&http, &rollback, &admin_cookie, &form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let said = format!("is back to the value of revision {}", revs[0]);
    assert!(r.text().contains(&said), "{}", r.text());
    let listed = common::listed_route(&http, &api, name).await;
    assert_eq!(
        listed["value"]["backends"][0]["url"], "http://127.0.0.1:9",
        "{listed}"
    );
    let r = post_form(
        &http,
        &rollback,
        &admin_cookie,
        &format!("csrf={admin_csrf}&rev=x"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Logout ends the session, even before it would expire.
    let r = post_form(
        &http,
        &format!("{base}/ui/logout"),
        &admin_cookie,
        &format!("csrf={admin_csrf}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = page(&http, &format!("{base}/ui/"), &admin_cookie).await;
    assert_eq!(r.headers["location"], "/ui/login?expired=1");

    // A session ends on its own after --ui-session-s.
    let started = Instant::now();
    wait_for(
        "the read session to expire",
        Duration::from_secs(10),
        || async {
            let r = page(&http, &format!("{base}/ui/"), &reader).await;
            (r.status == 303).then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(6));
    let r = page(&http, &format!("{base}/ui/"), &reader).await;
    assert_eq!(r.headers["location"], "/ui/login?expired=1");
    let r = http
        .get(&format!("{base}/ui/login?expired=1"))
        .await
        .unwrap();
    assert!(r.text().contains("session ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_is_open_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port("127.0.0.1");
    let api = format!("127.0.0.1:{port}");
    let node = Proc::start(&api, &dir.path().join("n1"), &[]);
    let http = Http::default();
    common::wait_for_cluster(&http, std::slice::from_ref(&node.addr), 1).await;
    let name = "open.test:http";
    let r = http
        .put(
            &format!("http://{api}/roo/v1/kv/com.roo.host:{name}"),
            "http://127.0.0.1:9",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = http
        .get(&format!("http://{api}/ui/routes/{name}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("read-only"));
    assert!(!r.text().contains("name=\"csrf\""), "no action offered");
    let r = post_form(
        &http,
        &format!("http://{api}/ui/routes/{name}/freeze"),
        "",
        "csrf=",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!frozen(&http, &api, name).await);
    let r = http.get(&format!("http://{api}/ui/login")).await.unwrap();
    assert!(r.text().contains("No API token is configured"));
}

/// Where the browser test leaves its screenshots (README shows them, from docs/dashboard/).
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_routes_and_rollouts_show_live_and_only_the_admin_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_port = common::free_port("127.0.0.1").to_string();
    let http_addr = format!("{{ip}}:{proxy_port}");
    let mut args = token_args();
    args.extend(["--http-addr", &http_addr]);
    let procs = common::process_cluster(dir.path(), 3, &args).await;
    let http = Http::default();
    let auth = format!("Bearer {ADMIN}");
    let admin = [("authorization", auth.as_str())];
    let (v1, v2) = (common::upstream("v1").await, common::upstream("v2").await);
    let ui = format!("http://{}/ui", procs[0].addr);

    let browser = Browser::start(1280, 1000).await;
    browser.goto(&format!("{ui}/")).await;
    assert!(
        browser.url().await.ends_with("/ui/login"),
        "sent to the login"
    );
    browser.screenshot(&shots().join("login.png")).await;
    browser.type_into("#token", READ).await;
    browser.click("form.login button").await;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Overview")
        .await;
    browser
        .wait_text("#members tbody", Duration::from_secs(10), |t| {
            t.matches("yes").count() == 3 && t.contains("leader")
        })
        .await;

    // A route PUT on another node shows on the routes page within a second.
    browser.goto(&format!("{ui}/routes")).await;
    browser
        .wait_text("body", Duration::from_secs(10), |_| true)
        .await;
    wait_for(
        "the page's live stream",
        Duration::from_secs(10),
        || async {
            (browser.eval("return document.body.dataset.live").await == "on").then_some(())
        },
    )
    .await;
    let name = "shop.test:http";
    let value = json!({"backends": [
        {"name": "v1", "url": format!("http://{v1}"), "weight": 100},
        {"name": "v2", "url": format!("http://{v2}"), "weight": 0},
    ]});
    let r = http
        .send(
            "PUT",
            &format!("http://{}/roo/v1/kv/com.roo.host:{name}", procs[1].addr),
            &admin,
            value.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let selector = format!("tr[data-route=\"{name}\"] td");
    let (_, took) = browser
        .wait_text(&selector, Duration::from_secs(5), |t| t == name)
        .await;
    println!("the route showed {took:?} after its PUT was answered");
    assert!(
        took < Duration::from_secs(1),
        "the route took {took:?} to show"
    );

    // Traffic through the other nodes, so that the rollout's checks pass and it steps, and the
    // pages of node 1 show counts only its peers have.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let proxies: Vec<String> = procs[1..]
            .iter()
            .map(|p| format!("{}:{proxy_port}", p.addr.rsplit_once(':').unwrap().0))
            .collect();
        tokio::spawn(async move {
            let http = Http::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("http://{}/", proxies[i % proxies.len()]);
                let _ = http.send("GET", &url, &[("host", "shop.test")], "").await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let steps: Vec<u32> = (1..=10).map(|i| i * 10).collect();
    let plan = json!({"canary": "v2", "steps": steps, "interval_ms": 2000, "min_requests": 1});
    let r = http
        .send(
            "PUT",
            &format!("http://{}/roo/v1/rollouts/{name}", procs[2].addr),
            &admin,
            plan.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The route's page follows the rollout: the canary's weight moves on its own.
    browser.goto(&format!("{ui}/routes/{name}")).await;
    let (first, _) = browser
        .wait_text("#canary-weight", Duration::from_secs(10), |_| true)
        .await;
    let (moved, _) = browser
        .wait_text("#canary-weight", Duration::from_secs(30), |t| {
            t != first && t != "10%"
        })
        .await;
    println!("the canary's weight went from {first} to {moved} on the page");
    browser
        .wait_text(
            "#backends tr[data-backend=v2] td:nth-child(4)",
            Duration::from_secs(10),
            |t| t.parse::<u64>().is_ok_and(|n| n > 0),
        )
        .await;
    browser.screenshot(&shots().join("route.png")).await;

    // The routes page shows the traffic the other nodes counted.
    browser.goto(&format!("{ui}/routes")).await;
    let backend = format!("tr[data-route=\"{name}\"] .backend[data-backend=v1]");
    browser
        .wait_text(&backend, Duration::from_secs(15), |t| !t.contains(" 0.0/s"))
        .await;
    browser.screenshot(&shots().join("routes.png")).await;
    browser.goto(&format!("{ui}/routes/{name}")).await;

    // The read token cannot pause it.
    browser.click("button[data-action=pause]").await;
    let (refused, _) = browser
        .wait_text("#notice", Duration::from_secs(10), |_| true)
        .await;
    assert!(refused.contains("read token cannot act"), "{refused}");
    let state = |i: usize| {
        let http = http.clone();
        let url = format!("http://{}/roo/v1/rollouts/{name}", procs[i].addr);
        async move { http.get(&url).await.unwrap().json() }
    };
    assert_eq!(state(0).await["state"], "progressing");

    // The admin can, with a click.
    browser.click("form.who button").await;
    browser
        .wait_text("label[for=token]", Duration::from_secs(10), |_| true)
        .await;
    browser.type_into("#token", ADMIN).await;
    browser.click("form.login button").await;
    browser
        .wait_text("h1", Duration::from_secs(10), |t| t == "Overview")
        .await;
    browser.screenshot(&shots().join("overview.png")).await;
    browser.goto(&format!("{ui}/routes/{name}")).await;
    browser.click("button[data-action=pause]").await;
    let (done, _) = browser
        .wait_text("#notice", Duration::from_secs(10), |_| true)
        .await;
    assert!(done.contains("is paused"), "{done}");
    let paused: Value = state(1).await;
    assert_eq!(paused["state"], "paused", "{paused}");
    let weight = paused["weight"].as_u64().unwrap();
    assert!(weight > 10 && weight < 100, "{paused}");
    browser
        .wait_text("#rollout h2", Duration::from_secs(10), |t| {
            t.contains("paused")
        })
        .await;

    // The activity stream shows it, with who did it.
    browser.goto(&format!("{ui}/events?type=rollout.")).await;
    let (row, _) = browser
        .wait_text(
            "tr[data-type=\"rollout.paused\"]",
            Duration::from_secs(10),
            |_| true,
        )
        .await;
    assert!(row.contains(name) && row.contains("api:admin"), "{row}");
    browser.screenshot(&shots().join("activity.png")).await;

    // Certificates: one stored by hand, shown without its key.
    let ca = TestCa::new("dashboard test CA");
    let (cert, _) = ca.stored(&["shop.test"]);
    let r = http
        .send(
            "PUT",
            &format!("http://{}/roo/v1/kv/com.roo.cert:shop.test", procs[0].addr),
            &admin,
            cert,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    browser.goto(&format!("{ui}/certs")).await;
    let (row, _) = browser
        .wait_text(
            "tr[data-host=\"shop.test\"]",
            Duration::from_secs(10),
            |_| true,
        )
        .await;
    assert!(
        row.contains("dashboard test CA") && row.contains("manual"),
        "{row}"
    );
    let source = browser
        .eval("return document.documentElement.outerHTML")
        .await;
    assert!(!source.as_str().unwrap().contains("PRIVATE KEY"));
    browser.screenshot(&shots().join("certificates.png")).await;

    // At phone width the route's page still fits: nothing wider than the window but tables,
    // which scroll in their own box.
    browser.resize(390, 844).await;
    browser.goto(&format!("{ui}/routes/{name}")).await;
    browser
        .wait_text("#rollout h2", Duration::from_secs(10), |_| true)
        .await;
    let overflow = browser
        .eval("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than the phone: {overflow}"
    );
    browser.screenshot(&shots().join("route-phone.png")).await;

    // In the dark, the same page on the dark colours.
    let background = "return getComputedStyle(document.body).backgroundColor";
    assert_eq!(browser.eval(background).await, "rgb(250, 250, 250)");
    browser.color_scheme("dark").await;
    assert_eq!(browser.eval(background).await, "rgb(13, 17, 23)");
    browser
        .screenshot(&shots().join("route-phone-dark.png"))
        .await;

    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
}
