//! The dashboard, at `/ui/` on the API port of every node: what is routed where, how each
//! version is doing, rollouts, certificates, the cluster and the activity stream.
//!
//! Pages are HTML rendered here ([`pages`]); everything they load comes from the node (one
//! stylesheet, one small script). The script follows [`live`], the activity stream plus a
//! tick, and fetches the page's `<main>` again on each message. A login with the API's read
//! or admin token opens a session ([`session`]); actions (pause, resume, promote, abort,
//! freeze, unfreeze, rollback) need an admin session and its CSRF token, and go through the
//! same functions as the API's. Without an admin token configured, the dashboard is open and
//! read-only.

mod live;
mod pages;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use maud::Markup;

use session::{Sessions, Viewer};

use crate::api::auth::Access;
use crate::api::{query_param, read_body, reply, route_key, Api, ApiError, Body};
use crate::rollout::{self, Action};
use pages::{Notice, Page};

pub const PREFIX: &str = "/ui";
/// Asked by the live updates: the page's `<main>` alone.
const PART_HEADER: &str = "x-roo-part";
const CSS: &str = include_str!("roo.css");
const JS: &str = include_str!("roo.js");

/// How long a render of a page's `<main>` serves the live updates that ask for it again.
const RENDER_KEPT: Duration = Duration::from_secs(1);
/// Renders kept at most (addresses times roles).
const RENDERS: usize = 256;

/// What the dashboard keeps on a node: its sessions, and recent renders.
pub struct Dashboard {
    sessions: Sessions,
    /// Live updates of every open page ask for their `<main>` at the same ticks: one render,
    /// while the KV is at the revision it was made at and for up to [`RENDER_KEPT`], serves
    /// the pages of one address and role. By address and role: when, the KV revision, the HTML.
    renders: Mutex<HashMap<(String, u8), Render>>,
}

/// When a render was made, the KV revision it read, and its HTML.
type Render = (Instant, u64, Arc<str>);

impl Dashboard {
    pub fn new(session_lifetime: Duration) -> Dashboard {
        Dashboard {
            sessions: Sessions::new(session_lifetime),
            renders: Mutex::new(HashMap::new()),
        }
    }

    fn kept(&self, key: &(String, u8), rev: u64) -> Option<Arc<str>> {
        let renders = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        let (at, at_rev, html) = renders.get(key)?;
        (*at_rev == rev && at.elapsed() < RENDER_KEPT).then(|| html.clone())
    }

    fn keep(&self, key: (String, u8), rev: u64, html: Arc<str>) {
        let mut renders = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        if renders.len() >= RENDERS {
            renders.retain(|_, (at, _, _)| at.elapsed() < RENDER_KEPT);
            if renders.len() >= RENDERS {
                renders.clear();
            }
        }
        renders.insert(key, (Instant::now(), rev, html));
    }
}

/// Answers a request for a path under `/ui`.
pub async fn handle(api: &Api, path: &str, req: Request<Incoming>) -> Response<Body> {
    let viewer = api.ui.sessions.viewer(&api.tokens, req.headers());
    match path {
        "/ui" => return redirect("/ui/", None),
        "/ui/assets/roo.css" => return asset(CSS, "text/css; charset=utf-8"),
        "/ui/assets/roo.js" => return asset(JS, "text/javascript; charset=utf-8"),
        "/ui/login" => return login(api, &viewer, req).await,
        "/ui/logout" => return logout(api, &viewer, req).await,
        _ => {}
    }
    if let Viewer::Out { expired } = viewer {
        // Pages send the browser to the login; the stream and actions are refused.
        if req.method() == Method::GET && path != live::PATH {
            let to = match expired {
                true => "/ui/login?expired=1",
                false => "/ui/login",
            };
            return redirect(to, None);
        }
        let why = match expired {
            true => "your session ended: log in again",
            false => "log in first",
        };
        return failed(&viewer, ApiError::Unauthorized(why.into()));
    }
    if path == live::PATH {
        return match live::stream(api, &req) {
            Ok(resp) => resp,
            Err(e) => failed(&viewer, e),
        };
    }
    let part = req.headers().contains_key(PART_HEADER);
    let role = match &viewer {
        Viewer::In(s) => s.access as u8,
        _ => u8::MAX,
    };
    let address = (req.uri().to_string(), role);
    // The revision before the render: a change that lands during it makes the next ask render.
    let rev = api.kv.revision();
    if part && req.method() == Method::GET {
        if let Some(html) = api.ui.kept(&address, rev) {
            return served(&viewer, StatusCode::OK, &html);
        }
    }
    let answer = match *req.method() {
        Method::GET => page(api, path, &viewer, &req)
            .await
            .map(|p| (p, None, StatusCode::OK)),
        Method::POST => act(api, path, &viewer, req)
            .await
            .map(|(p, n, status)| (p, Some(n), status)),
        _ => Err(ApiError::MethodNotAllowed(vec![Method::GET, Method::POST])),
    };
    match answer {
        Ok((page, notice, status)) => {
            let text: Arc<str> = match part {
                true => page.main.into_string().into(),
                false => page
                    .whole(&viewer, rev, notice.as_ref())
                    .into_string()
                    .into(),
            };
            if part && status == StatusCode::OK && notice.is_none() {
                api.ui.keep(address, rev, text.clone());
            }
            served(&viewer, status, &text)
        }
        Err(e) => failed(&viewer, e),
    }
}

async fn page<B>(
    api: &Api,
    path: &str,
    viewer: &Viewer,
    req: &Request<B>,
) -> Result<Page, ApiError> {
    let rest = path.strip_prefix("/ui/").unwrap_or_default();
    match rest {
        "" => pages::overview(api).await,
        "routes" => {
            let filter = query_param(req.uri(), "q")?.unwrap_or_default();
            let page = match query_param(req.uri(), "page")? {
                None => 1,
                Some(p) => p.parse().map_err(|_| {
                    ApiError::BadRequest(format!("page {p:?} is not a page number"))
                })?,
            };
            pages::routes(api, &filter, page).await
        }
        "certs" => pages::certs(api).await,
        "events" => {
            let kind = query_param(req.uri(), "type")?.unwrap_or_default();
            pages::activity(api, &kind).await
        }
        _ => match rest.strip_prefix("routes/") {
            Some(name) => pages::route(api, &route_key(name)?, viewer).await,
            None => Err(ApiError::NotFound),
        },
    }
}

/// An action on a route (`POST /ui/routes/<route>/<action>`, a form with the session's CSRF
/// token): the route's page again, with what was done or why not, and the status that says so.
async fn act(
    api: &Api,
    path: &str,
    viewer: &Viewer,
    req: Request<Incoming>,
) -> Result<(Page, Notice, StatusCode), ApiError> {
    let rest = path.strip_prefix("/ui/routes/").ok_or(ApiError::NotFound)?;
    let (name, what) = rest.rsplit_once('/').ok_or(ApiError::NotFound)?;
    let key = route_key(name)?;
    let form = form(req).await?;
    let refused = |text: &str| {
        let notice = Notice {
            ok: false,
            text: text.to_string(),
        };
        (notice, StatusCode::FORBIDDEN)
    };
    let (notice, status) = match viewer {
        Viewer::Open => refused("No admin token is configured on this node: the dashboard cannot act."),
        Viewer::Out { .. } => refused("Log in first."),
        Viewer::In(s) if !s.csrf_matches(field(&form, "csrf").unwrap_or_default()) => {
            refused("The form is out of date (its CSRF token does not match your session): reload the page and try again.")
        }
        Viewer::In(s) if s.access != Access::Admin => {
            refused("The read token cannot act: log out and log in with the admin token.")
        }
        Viewer::In(_) => match route_action(api, &key, what, &form).await {
            Ok(text) => (Notice { ok: true, text }, StatusCode::OK),
            Err(e) => {
                let status = e.status();
                let text = e.to_string();
                (Notice { ok: false, text }, status)
            }
        },
    };
    let page = pages::route(api, &key, viewer).await?;
    Ok((page, notice, status))
}

/// Does `what` to the route as the admin; what was done, in a sentence.
async fn route_action(
    api: &Api,
    key: &crate::routes::RouteKey,
    what: &str,
    form: &[(String, String)],
) -> Result<String, ApiError> {
    let name = crate::routes::write::route_name(key);
    let admin = Access::Admin;
    if let Some(action) = Action::parse(what) {
        let r = rollout::act(&api.kv, key, action, admin.source()).await?;
        return Ok(format!(
            "The rollout of {name} is {} (canary {} at {}%).",
            r.state.as_str(),
            r.plan.canary,
            r.weight
        ));
    }
    match what {
        "freeze" | "unfreeze" => {
            let frozen = what == "freeze";
            let changed = crate::api::routes::freeze(api, admin, key, frozen).await?;
            Ok(match (changed, frozen) {
                (true, true) => format!("{name} is frozen."),
                (true, false) => format!("{name} is no longer frozen."),
                (false, true) => format!("{name} was already frozen."),
                (false, false) => format!("{name} was not frozen."),
            })
        }
        "rollback" => {
            let rev =
                match field(form, "rev") {
                    None => None,
                    Some(v) => Some(v.parse::<u64>().map_err(|_| {
                        ApiError::BadRequest(format!("rev {v:?} is not a revision"))
                    })?),
                };
            let (rev, restored) =
                crate::api::routes::restore(api, admin, key.clone(), rev, false).await?;
            Ok(format!(
                "{name} is back to the value of revision {restored}, as revision {rev}."
            ))
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn login(api: &Api, viewer: &Viewer, req: Request<Incoming>) -> Response<Body> {
    let open = api.tokens.open();
    match *req.method() {
        Method::GET => {
            let why = match query_param(req.uri(), "expired") {
                Ok(Some(_)) => Some("Your session ended: log in again."),
                _ => None,
            };
            html(StatusCode::OK, pages::login(why, open))
        }
        Method::POST if open => redirect("/ui/", None),
        Method::POST => {
            let form = match form(req).await {
                Ok(form) => form,
                Err(e) => return failed(viewer, e),
            };
            let given = field(&form, "token").unwrap_or_default();
            match api.tokens.role_of(given) {
                Some(access) => {
                    let id = api.ui.sessions.open(access);
                    let cookie =
                        session::set_cookie(Some(&id), api.ui.sessions.lifetime(), api.tls);
                    tracing::info!(role = access.source(), "dashboard login");
                    redirect("/ui/", Some(cookie))
                }
                None => {
                    tracing::info!("dashboard login with a wrong token");
                    html(
                        StatusCode::UNAUTHORIZED,
                        pages::login(Some("That is neither the read nor the admin token."), false),
                    )
                }
            }
        }
        _ => failed(
            viewer,
            ApiError::MethodNotAllowed(vec![Method::GET, Method::POST]),
        ),
    }
}

async fn logout(api: &Api, viewer: &Viewer, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return failed(viewer, ApiError::MethodNotAllowed(vec![Method::POST]));
    }
    let headers = req.headers().clone();
    let form = match form(req).await {
        Ok(form) => form,
        Err(e) => return failed(viewer, e),
    };
    if let Viewer::In(s) = viewer {
        if !s.csrf_matches(field(&form, "csrf").unwrap_or_default()) {
            return failed(
                viewer,
                ApiError::Forbidden("the logout form's CSRF token does not match".into()),
            );
        }
        api.ui.sessions.close(&headers);
    }
    let cookie = session::set_cookie(None, api.ui.sessions.lifetime(), api.tls);
    redirect("/ui/login", Some(cookie))
}

/// A form body (`application/x-www-form-urlencoded`), its fields decoded.
async fn form(req: Request<Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    let body = read_body(req, 16 * 1024).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the form is not UTF-8".into()))?;
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .map(|v| v.into_owned())
            .map_err(|_| ApiError::BadRequest("a form field is not UTF-8".into()))
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A rendered page for `viewer`: its session's CSRF token in its forms.
fn served(viewer: &Viewer, status: StatusCode, text: &str) -> Response<Body> {
    let text = match viewer {
        Viewer::In(s) => text.replace(pages::CSRF_SLOT, &s.csrf),
        _ => text.to_string(),
    };
    page_response(status, text)
}

fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    page_response(status, markup.into_string())
}

fn page_response(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(reply::boxed(Full::new(text.into())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing but the node's own files, and no framing by other sites.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn asset(body: &'static str, kind: &'static str) -> Response<Body> {
    let mut resp = Response::new(reply::boxed(Full::new(body.into())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut resp = Response::new(reply::boxed(Full::default()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// An error as a page, with its status.
fn failed(viewer: &Viewer, e: ApiError) -> Response<Body> {
    let status = e.status();
    if status.is_server_error() {
        tracing::warn!(error = %e, %status, "dashboard request failed");
    }
    html(status, pages::error(viewer, &e))
}
