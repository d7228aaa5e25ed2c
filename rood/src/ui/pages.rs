//! The dashboard's pages, rendered on the server from what the node reads in its local copy of
//! the KV (stale reads: a node without quorum still shows what it knows), its tables and the
//! cluster's counts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maud::{html, Markup, DOCTYPE};
use roo_acme::cert::{rfc3339, CertInfo, StoredCert};
use roo_acme::store::{HostStatus, CERT_PREFIX, STATUS_PREFIX};
use roo_kv::Consistency;
use serde_json::Value;

use super::session::Viewer;
use crate::api::routes::RouteStates;
use crate::api::{Api, ApiError};
use crate::events::{self, Event};
use crate::rollout::{self, Rollout, Verdict};
use crate::routes::write::{self, HistoryRecord, OWNER_PREFIX};
use crate::routes::{Route, RouteKey, ROUTE_PREFIX};
use crate::stats::{self, Brief};

/// The window of the "live" request rates.
const LIVE_WINDOW: Duration = Duration::from_secs(10);
/// The window of the overview's cluster totals and a route's backends.
const WINDOW: Duration = Duration::from_secs(60);
/// Certificates that expire within this are flagged.
const EXPIRING: Duration = Duration::from_secs(14 * 24 * 3600);
/// Events on the overview, and on the activity page.
const RECENT_EVENTS: usize = 10;
const ACTIVITY_EVENTS: usize = 200;
const STALE: Consistency = Consistency::Stale;

/// What a page is, for the navigation.
#[derive(Clone, Copy, PartialEq)]
pub enum Tab {
    Overview,
    Routes,
    Certificates,
    Activity,
    None,
}

/// A message shown at the top of a page: what an action did, or why not.
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// A rendered page: its `<main>` alone (what live updates fetch) or whole.
pub struct Page {
    pub title: String,
    pub tab: Tab,
    pub main: Markup,
    /// Above `<main>`, kept across live updates (a filter being typed).
    pub tools: Option<Markup>,
    /// Whether it follows the stream.
    pub live: bool,
    /// Its own address, where it answers an action's POST: live updates fetch that.
    pub address: Option<String>,
}

impl Page {
    pub fn whole(&self, viewer: &Viewer, since: u64, notice: Option<&Notice>) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(&self.title, self.live))
                body {
                    header {
                        a.brand href="/ui/" { "roo" }
                        nav {
                            (tab("/ui/", "Overview", self.tab == Tab::Overview))
                            (tab("/ui/routes", "Routes", self.tab == Tab::Routes))
                            (tab("/ui/certs", "Certificates", self.tab == Tab::Certificates))
                            (tab("/ui/events", "Activity", self.tab == Tab::Activity))
                        }
                        (who(viewer))
                    }
                    @if let Viewer::Open = viewer {
                        p.banner { "No API token is configured on this node: the dashboard is read-only, and so is nobody's login." }
                    }
                    @if let Some(n) = notice {
                        p.notice.ok[n.ok].refused[!n.ok] role="status" id="notice" { (n.text) }
                    }
                    @if let Some(tools) = &self.tools { (tools) }
                    @if self.live {
                        main data-live="" data-since=(since) data-page=[self.address.as_deref()] { (self.main) }
                    } @else {
                        main { (self.main) }
                    }
                }
            }
        }
    }
}

fn head(title: &str, live: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · roo" }
            link rel="stylesheet" href="/ui/assets/roo.css";
            @if live { script src="/ui/assets/roo.js" defer {} }
        }
    }
}

fn tab(href: &str, name: &str, active: bool) -> Markup {
    html! { a href=(href) aria-current=[active.then_some("page")] { (name) } }
}

fn who(viewer: &Viewer) -> Markup {
    html! {
        @match viewer {
            Viewer::In(s) => {
                form.who method="post" action="/ui/logout" {
                    span { (match s.access { crate::api::auth::Access::Admin => "admin", _ => "read only" }) }
                    input type="hidden" name="csrf" value=(s.csrf);
                    button type="submit" { "Log out" }
                }
            }
            _ => {}
        }
    }
}

/// The login form, with why it is shown.
pub fn login(why: Option<&str>, open: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", false))
            body.login {
                form.login method="post" action="/ui/login" {
                    h1 { "roo" }
                    @if open {
                        p.banner { "No API token is configured on this node: no login is needed, and the dashboard is read-only. " a href="/ui/" { "Open it." } }
                    } @else {
                        @if let Some(why) = why { p.notice.refused role="status" id="notice" { (why) } }
                        label for="token" { "API token (read or admin)" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// An error as a page of its own.
pub fn error(viewer: &Viewer, e: &ApiError) -> Markup {
    let page = Page {
        title: "Error".into(),
        tab: Tab::None,
        main: html! { h1 { "Something went wrong" } },
        tools: None,
        live: false,
        address: None,
    };
    let notice = Notice {
        ok: false,
        text: e.to_string(),
    };
    page.whole(viewer, 0, Some(&notice))
}

fn unix_ms_text(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn pct(rate: Option<f64>) -> String {
    rate.map_or("–".into(), |r| format!("{:.2}%", r * 100.0))
}

fn rps(b: &Brief, window: Duration) -> String {
    format!("{:.1}/s", b.requests as f64 / window.as_secs_f64())
}

/// What a backend of a route's JSON is called and weighs.
fn backends(value: &Value) -> Vec<(String, u64, Vec<String>)> {
    value["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let name = b["name"].as_str().unwrap_or("").to_string();
            let weight = b["weight"].as_u64().unwrap_or(100);
            let mut urls: Vec<String> = b["urls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect();
            if let Some(u) = b["url"].as_str() {
                urls.push(u.to_string());
            }
            (name, weight, urls)
        })
        .collect()
}

fn shares(backends: &[(String, u64, Vec<String>)]) -> Vec<f64> {
    let total: u64 = backends.iter().map(|b| b.1).sum();
    backends
        .iter()
        .map(|b| match total {
            0 => 0.0,
            t => b.1 as f64 * 100.0 / t as f64,
        })
        .collect()
}

/// The host a route name starts with and whether it is served over TLS.
fn host_of(route: &str) -> (&str, bool) {
    let https = route.ends_with(":https");
    let host = route.split(':').next().unwrap_or(route);
    (host, https)
}

/// Expiry of the certificate this node serves for `host`, if any.
fn served_cert(api: &Api, host: &str) -> Option<CertInfo> {
    let certs = api.tables.certs.load();
    let key = certs.lookup(host)?;
    CertInfo::from_der(key.cert.first()?).ok()
}

fn cert_state(info: Option<&CertInfo>) -> Markup {
    let now = SystemTime::now();
    html! {
        @match info {
            None => span.badge.bad { "no certificate" },
            Some(i) if i.expired(now) => span.badge.bad { "expired" },
            Some(i) if i.not_after.duration_since(now).unwrap_or_default() < EXPIRING => {
                span.badge.warn title=(rfc3339(i.not_after)) { "expires " (days_left(i)) }
            }
            Some(i) => span.badge.ok title=(rfc3339(i.not_after)) { (days_left(i)) " left" },
        }
    }
}

fn days_left(info: &CertInfo) -> String {
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    format!("in {} d", left.as_secs() / 86_400)
}

fn state_badge(state: &str) -> Markup {
    let class = match state {
        "ok" | "promoted" => "ok",
        "progressing" | "paused" | "rolled_back" | "frozen" => "warn",
        _ => "bad",
    };
    html! { span class={"badge " (class)} { (state) } }
}

fn event_rows(events: &[Event]) -> Markup {
    html! {
        div.scroll { table.events {
            thead { tr { th { "id" } th { "time" } th { "type" } th { "subject" } th { "source" } th { "detail" } } }
            tbody {
                @for e in events.iter().rev() {
                    tr data-type=(e.kind) {
                        td { (e.id) }
                        td { time { (e.time) } }
                        td { code { (e.kind) } }
                        td { @if e.kind.starts_with("route.") || e.kind.starts_with("rollout.") {
                            a href={"/ui/routes/" (encode(&e.subject))} { (e.subject) }
                        } @else { (e.subject) } }
                        td { (e.source) }
                        td.detail { (detail_text(&e.detail)) }
                    }
                }
            }
        } }
    }
}

/// An event's detail in one line, the long values cut.
fn detail_text(detail: &Value) -> String {
    let mut text = detail.to_string();
    if text.len() > 160 {
        let mut cut = 157;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// What a route name cannot hold as it is in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Percent-encodes a route name for a path.
fn encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// The last `n` events of `kinds`, oldest first, route events with their values.
async fn recent(api: &Api, n: usize, kinds: &[String]) -> Result<Vec<Event>, ApiError> {
    let mut all = events::list(&api.kv, 0, kinds, STALE).await?;
    let mut list = all.split_off(all.len().saturating_sub(n));
    write::with_values(&api.kv, &mut list).await?;
    Ok(list)
}

pub async fn overview(api: &Api) -> Result<Page, ApiError> {
    let status = api.kv.status().await;
    let health = api.kv.members_health().await;
    let (briefs, missing) = stats::gather_briefs(&api.kv, &api.stats, WINDOW).await;
    let mut total = Brief::default();
    for b in briefs.values().flat_map(|r| r.values()) {
        total.requests += b.requests;
        total.failures += b.failures;
    }
    let certs = certificates(api).await?;
    let now = SystemTime::now();
    let expiring: Vec<&CertRow> = certs
        .iter()
        .filter(|c| match &c.info {
            Some(i) => i.not_after.duration_since(now).unwrap_or_default() < EXPIRING,
            None => true,
        })
        .collect();
    let events = recent(api, RECENT_EVENTS, &[]).await?;
    let main = html! {
        h1 { "Overview" }
        section.cards {
            div.card { h2 { "Requests" } p.big #cluster-rps { (rps(&total, WINDOW)) } p { "across the cluster, last minute" } }
            div.card { h2 { "Errors" } p.big #cluster-errors { (pct(total.success_rate().map(|s| 1.0 - s))) } p { (total.failures) " of " (total.requests) " answers were 5xx" } }
            div.card { h2 { "Certificates" } p.big { (expiring.len()) } p { "expiring within 14 days, expired or missing" } }
        }
        @if !missing.is_empty() {
            p.notice.refused { "No counts from node(s) " (missing.keys().map(u64::to_string).collect::<Vec<_>>().join(", ")) ": the figures leave them out." }
        }
        h2 { "Cluster" }
        div.scroll { table #members {
            thead { tr { th { "node" } th { "address" } th { "role" } th { "reachable" } th { "lag (entries)" } th { "last error" } } }
            tbody {
                @for (id, addr) in &status.members {
                    @let idn: u64 = id.parse().unwrap_or(0);
                    @let h = health.as_ref().ok().and_then(|h| h.get(&idn));
                    tr {
                        td { (id) @if idn == status.node_id { " (this node)" } }
                        td { (addr) }
                        td { @if status.leader_id == Some(idn) { span.badge.ok { "leader" } } @else if status.voters.contains(&idn) { "voter" } @else { "learner" } }
                        td { @match h { Some(h) if h.reachable => span.badge.ok { "yes" }, Some(_) => span.badge.bad { "no" }, None => "?" } }
                        td { @match h { Some(h) => (h.lag), None => "?" } }
                        td { @if let Some(e) = h.and_then(|h| h.last_error.as_ref()) { (e) } }
                    }
                }
            }
        } }
        @if let Err(e) = &health { p.notice.refused { "No leader to ask about reachability: " (e) } }
        @if !expiring.is_empty() {
            h2 { "Certificates to look at" }
            (cert_table(&expiring))
        }
        h2 { "Recent activity" }
        (event_rows(&events))
    };
    Ok(Page {
        title: "Overview".into(),
        tab: Tab::Overview,
        main,
        tools: None,
        live: true,
        address: None,
    })
}

/// Where a page's forms take the session's CSRF token, put in as the page is served.
pub const CSRF_SLOT: &str = "roo-csrf-slot";

/// Routes on a page of the routes list.
pub const ROUTES_A_PAGE: usize = 100;

/// The routes list: those whose name contains `filter`, page `page` (from 1) of them.
pub async fn routes(api: &Api, filter: &str, page: usize) -> Result<Page, ApiError> {
    let (records, _) = api.kv.scan(ROUTE_PREFIX, STALE).await?;
    let owners = crate::api::routes::owners(&api.kv, STALE).await?;
    let states = RouteStates::read(&api.kv, STALE).await?;
    let (briefs, _) = stats::gather_briefs(&api.kv, &api.stats, LIVE_WINDOW).await;
    let needle = filter.to_lowercase();
    let mut certs: HashMap<String, Option<CertInfo>> = HashMap::new();
    let none = BTreeMap::new();
    let matching: Vec<(&str, &roo_kv::Record)> = records
        .iter()
        .map(|(k, r)| (k.trim_start_matches(ROUTE_PREFIX), r))
        .filter(|(name, _)| needle.is_empty() || name.to_lowercase().contains(&needle))
        .collect();
    let pages = matching.len().div_ceil(ROUTES_A_PAGE).max(1);
    let page = page.clamp(1, pages);
    let first = (page - 1) * ROUTES_A_PAGE;
    let shown = &matching[first..(first + ROUTES_A_PAGE).min(matching.len())];
    let link = |page: usize| {
        let q = percent_encoding::utf8_percent_encode(filter, percent_encoding::NON_ALPHANUMERIC);
        format!("/ui/routes?q={q}&page={page}")
    };
    let rows = html! {
        @for (name, record) in shown {
            @let name = *name;
            {
                @let parsed = Route::parse(&record.value);
                @let (host, https) = host_of(name);
                @let counts = briefs.get(name).unwrap_or(&none);
                tr data-route=(name) {
                    td { a href={"/ui/routes/" (encode(name))} { (name) } }
                    @match &parsed {
                        Ok(route) => {
                            @let value = route.to_json();
                            @let list = backends(&value);
                            @let share = shares(&list);
                            td { (state_badge(states.of(name))) }
                            td.backends {
                                @for ((b, _, _), s) in list.iter().zip(&share) {
                                    @let c = counts.get(b).copied().unwrap_or_default();
                                    div.backend data-backend=(b) {
                                        b { (b) } " " span.weight { (format!("{s:.0}%")) }
                                        " · " (rps(&c, LIVE_WINDOW)) " · " (pct(c.success_rate()))
                                    }
                                }
                            }
                        }
                        Err(e) => { td { (state_badge("invalid")) } td { (e.to_string()) } }
                    }
                    td { (owners.get(name).map_or("api", String::as_str)) }
                    td { @if https {
                        (cert_state(certs.entry(host.to_string()).or_insert_with(|| served_cert(api, host)).as_ref()))
                    } @else { "–" } }
                }
            }
        }
    };
    let main = html! {
        h1 { "Routes" }
        p #shown {
            @if shown.is_empty() { "No route" } @else { "Routes " (first + 1) " to " (first + shown.len()) }
            " of " (matching.len()) @if !needle.is_empty() { " matching (of " (records.len()) ")" }
            "; requests over the last " (LIVE_WINDOW.as_secs()) " s, across the cluster."
        }
        @if pages > 1 {
            nav.pager {
                @if page > 1 { a rel="prev" href=(link(page - 1)) { "← previous" } }
                " page " (page) " of " (pages) " "
                @if page < pages { a rel="next" href=(link(page + 1)) { "next →" } }
            }
        }
        div.scroll { table #routes {
            thead { tr { th { "route" } th { "state" } th { "backends: weight · requests · success" } th { "owner" } th { "certificate" } } }
            tbody { (rows) }
        } }
    };
    let tools = html! {
        form.tools method="get" action="/ui/routes" {
            label for="q" { "Filter" }
            input #q type="search" name="q" value=(filter) placeholder="host, port or scheme";
            button type="submit" { "Filter" }
        }
    };
    Ok(Page {
        title: "Routes".into(),
        tab: Tab::Routes,
        main,
        tools: Some(tools),
        live: true,
        address: None,
    })
}

/// A button that posts an action on a route.
fn action(name: &str, what: &str, label: &str, csrf: &str, rev: Option<u64>) -> Markup {
    html! {
        form.action method="post" action={"/ui/routes/" (encode(name)) "/" (what)} {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(rev) = rev { input type="hidden" name="rev" value=(rev); }
            button type="submit" name="do" value=(what) data-action=(what) { (label) }
        }
    }
}

pub async fn route(api: &Api, key: &RouteKey, viewer: &Viewer) -> Result<Page, ApiError> {
    let name = write::route_name(key);
    let record = api
        .kv
        .get(&key.to_string(), STALE)
        .await?
        .ok_or_else(|| ApiError::NotFoundWhy(format!("no route {name}")))?;
    let states = RouteStates::read(&api.kv, STALE).await?;
    let owner = api
        .kv
        .get(&format!("{OWNER_PREFIX}{name}"), STALE)
        .await?
        .map_or("api".to_string(), |r| {
            String::from_utf8_lossy(&r.value).into_owned()
        });
    let history = write::history(&api.kv, key, STALE).await?;
    let ro = rollout::get(&api.kv, key, STALE).await?;
    let seen = stats::gather(&api.kv, &api.stats, &name, WINDOW).await;
    let down = api.down.addrs();
    // Actions show to a session; the open dashboard has none. The session's token goes in
    // where the page is served ([`CSRF_SLOT`]): a render is shared by the sessions of a role.
    let csrf = match viewer {
        Viewer::In(_) => Some(CSRF_SLOT),
        _ => None,
    };
    let parsed = Route::parse(&record.value);
    let value = parsed
        .as_ref()
        .map(Route::to_json)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&record.value).into()));
    let list = backends(&value);
    let share = shares(&list);
    let state = match &parsed {
        Ok(_) => states.of(&name),
        Err(_) => "invalid",
    };
    let frozen = state == "frozen";
    let main = html! {
        h1 { (name) " " (state_badge(state)) }
        p { "revision " (record.mod_rev) " · owner " (owner) }
        @if let Err(e) = &parsed { p.notice.refused { (e.to_string()) } }
        @if let Some(csrf) = csrf {
            div.actions {
                @if frozen { (action(&name, "unfreeze", "Unfreeze", csrf, None)) }
                @else { (action(&name, "freeze", "Freeze", csrf, None)) }
            }
        }
        h2 { "Backends" }
        div.scroll { table #backends {
            thead { tr { th { "backend" } th { "weight" } th { "addresses" } th { "requests (1 min)" } th { "success" } th { "p50" } th { "p99" } } }
            tbody {
                @for ((b, w, urls), s) in list.iter().zip(&share) {
                    @let t = seen.backends.get(b).cloned().unwrap_or_default();
                    tr data-backend=(b) {
                        td { b { (b) } }
                        td.weight { (format!("{s:.0}%")) " (" (w) ")" }
                        td { @for u in urls { div { code { (u) } } } }
                        td { (t.requests) }
                        td { (pct(t.success_rate())) }
                        td { (t.quantile_ms(0.5).map_or("–".into(), |v| format!("{v:.1} ms"))) }
                        td { (t.quantile_ms(0.99).map_or("–".into(), |v| format!("{v:.1} ms"))) }
                    }
                }
            }
        } }
        @if !seen.missing.is_empty() { p.notice.refused { "No counts from node(s) " (seen.missing.keys().map(u64::to_string).collect::<Vec<_>>().join(", ")) "." } }
        @if let Some(h) = value.get("health").filter(|h| !h.is_null()) {
            p { "Health check: " code { (h.to_string()) } }
        }
        @if !down.is_empty() {
            p { "Out of rotation on this node: " @for a in down.iter() { code { (a) } " " } }
        } @else {
            p { "No address of any route is out of rotation on this node." }
        }
        @let middlewares = value["middlewares"].as_array().map(|m| m.len()).unwrap_or(0);
        p { (middlewares) " middleware(s)" @if value.get("match").is_some() { ", match rules" } @if value.get("paths").is_some() { ", path routes" } @if value.get("sticky").is_some() { ", sticky" } "." }
        details { summary { "The route as stored" } pre { (serde_json::to_string_pretty(&value).unwrap_or_default()) } }
        @if let Some((r, _)) = &ro { (rollout_part(&name, r, csrf)) }
        h2 { "History" }
        (history_part(&name, &history, csrf))
    };
    Ok(Page {
        address: Some(format!("/ui/routes/{}", encode(&name))),
        title: name,
        tab: Tab::Routes,
        main,
        tools: None,
        live: true,
    })
}

fn rollout_part(name: &str, r: &Rollout, csrf: Option<&str>) -> Markup {
    html! {
        section #rollout data-state=(r.state.as_str()) {
            h2 { "Rollout of " (r.plan.canary) " " (state_badge(r.state.as_str())) }
            p {
                "canary " b { (r.plan.canary) } " at " b #canary-weight { (r.weight) "%" }
                " against " (r.stable_backend) "; step " (r.step + 1) " of " (r.plan.steps.len())
                " (" (r.plan.steps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) ")"
                "; failed checks " (r.failures) " of " (r.plan.failure_limit) " allowed"
                "; checks every " (r.plan.interval_ms / 1000) " s; started " (r.started) " by " (r.source) "."
            }
            @if let Some(csrf) = csrf {
                div.actions {
                    @if r.state == rollout::State::Progressing { (action(name, "pause", "Pause", csrf, None)) }
                    @if r.state == rollout::State::Paused { (action(name, "resume", "Resume", csrf, None)) }
                    @if r.state.open() {
                        (action(name, "promote", "Promote", csrf, None))
                        (action(name, "abort", "Abort", csrf, None))
                    }
                }
            }
            (chart(r))
            @if !r.checks.is_empty() {
                div.scroll { table.checks {
                    thead { tr { th { "time" } th { "step" } th { "weight" } th { "requests" } th { "success" } th { "p99" } th { "verdict" } } }
                    tbody { @for c in r.checks.iter().rev().take(10) {
                        tr {
                            td { (c.time) } td { (c.step + 1) } td { (c.weight) "%" } td { (c.requests) }
                            td { (pct(c.success_rate)) }
                            td { (c.p99_ms.map_or("–".into(), |v| format!("{v:.1} ms"))) }
                            td { (match c.verdict { Verdict::Pass => "pass", Verdict::Fail => "fail", Verdict::Hold => "hold" }) }
                        }
                    } }
                } }
            }
        }
    }
}

/// The canary's weight and success rate at each check, as an SVG chart.
fn chart(r: &Rollout) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    let n = r.checks.len();
    if n == 0 {
        return html! { p { "No check yet." } };
    }
    let x = |i: usize| match n {
        1 => W / 2.0,
        _ => 20.0 + (W - 40.0) * i as f64 / (n - 1) as f64,
    };
    let y = |v: f64| H - 10.0 - (H - 20.0) * v.clamp(0.0, 100.0) / 100.0;
    let line = |f: &dyn Fn(&rollout::Check) -> Option<f64>| {
        r.checks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| f(c).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let weights = line(&|c| Some(f64::from(c.weight)));
    let success = line(&|c| c.success_rate.map(|s| s * 100.0));
    html! {
        figure.chart {
            svg viewBox={"0 0 " (W) " " (H)} role="img" aria-label="canary weight and success rate per check" {
                line.grid x1="0" x2=(W) y1=(y(100.0)) y2=(y(100.0)) {}
                line.grid x1="0" x2=(W) y1=(y(50.0)) y2=(y(50.0)) {}
                line.grid x1="0" x2=(W) y1=(y(0.0)) y2=(y(0.0)) {}
                polyline.weight points=(weights) {}
                polyline.success points=(success) {}
                @for (i, c) in r.checks.iter().enumerate() {
                    circle class={"v-" (match c.verdict { Verdict::Pass => "pass", Verdict::Fail => "fail", Verdict::Hold => "hold" })}
                        cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(f64::from(c.weight)))) r="4" {}
                }
            }
            figcaption { span.key-weight { "canary weight" } " · " span.key-success { "success rate" } " (0 to 100%), one point per check: green passed, red failed, grey held" }
        }
    }
}

fn history_part(name: &str, history: &[(u64, HistoryRecord)], csrf: Option<&str>) -> Markup {
    html! {
        ol.history {
            @for (i, (rev, rec)) in history.iter().enumerate() {
                @let older = history.get(i + 1).map(|(_, r)| &r.value);
                li data-rev=(rev) {
                    div.head {
                        b { "rev " (rev) } " · " time { (unix_ms_text(rec.time)) } " · " (rec.source)
                        @if let Some(of) = rec.rollback_of { " · restores rev " (of) }
                        @if i == 0 { " · " span.badge.ok { "current" } }
                        @else if let Some(csrf) = csrf {
                            @if !rec.value.is_null() { (action(name, "rollback", "Roll back to this", csrf, Some(*rev))) }
                        }
                    }
                    (diff(older.unwrap_or(&Value::Null), &rec.value))
                }
            }
        }
    }
}

/// A line diff of two route values, as pretty JSON.
fn diff(old: &Value, new: &Value) -> Markup {
    let text = |v: &Value| match v {
        Value::Null => Vec::new(),
        v => serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
    };
    let (a, b) = (text(old), text(new));
    html! {
        pre.diff {
            @if b.is_empty() { span.del { "(removed)" } "\n" }
            @for (kind, line) in line_diff(&a, &b) {
                @match kind {
                    '-' => { span.del { "- " (line) } "\n" }
                    '+' => { span.add { "+ " (line) } "\n" }
                    _ => { span { "  " (line) } "\n" }
                }
            }
        }
    }
}

/// The lines of `a` and `b` marked kept (' '), removed ('-') or added ('+'), by their longest
/// common subsequence. Route values are a few dozen lines: the quadratic table is small.
fn line_diff<'a>(a: &'a [String], b: &'a [String]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = match a[i] == b[j] {
                true => lcs[i + 1][j + 1] + 1,
                false => lcs[i + 1][j].max(lcs[i][j + 1]),
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].as_str()));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first, as diffs read.
            out.push(('-', a[i].as_str()));
            i += 1;
        } else {
            out.push(('+', b[j].as_str()));
            j += 1;
        }
    }
    out
}

/// A certificate as the certificates page shows it: never its key.
pub struct CertRow {
    host: String,
    source: String,
    info: Option<CertInfo>,
    status: Option<HostStatus>,
}

/// Every certificate stored, and every host ACME is working on without one.
async fn certificates(api: &Api) -> Result<Vec<CertRow>, ApiError> {
    let (stored, _) = api.kv.scan(CERT_PREFIX, STALE).await?;
    let (statuses, _) = api.kv.scan(STATUS_PREFIX, STALE).await?;
    let mut statuses: BTreeMap<String, HostStatus> = statuses
        .into_iter()
        .filter_map(|(k, r)| {
            let status = serde_json::from_slice(&r.value).ok()?;
            Some((k.trim_start_matches(STATUS_PREFIX).to_string(), status))
        })
        .collect();
    let mut rows: Vec<CertRow> = stored
        .into_iter()
        .map(|(k, r)| {
            let host = k.trim_start_matches(CERT_PREFIX).to_string();
            let cert: Option<StoredCert> = serde_json::from_slice(&r.value).ok();
            let info = cert
                .as_ref()
                .and_then(|c| CertInfo::from_pem(&c.cert_pem).ok());
            let source = cert
                .and_then(|c| c.source)
                .unwrap_or_else(|| "manual".into());
            let status = statuses.remove(&host);
            CertRow {
                host,
                source,
                info,
                status,
            }
        })
        .collect();
    rows.extend(statuses.into_iter().map(|(host, status)| CertRow {
        host,
        source: "acme".into(),
        info: None,
        status: Some(status),
    }));
    rows.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(rows)
}

fn cert_table(rows: &[&CertRow]) -> Markup {
    let unix = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
    html! {
        div.scroll { table.certs {
            thead { tr { th { "host" } th { "state" } th { "issuer" } th { "expires" } th { "source" } th { "next renewal" } th { "last ACME error" } } }
            tbody { @for c in rows {
                tr data-host=(c.host) {
                    td { (c.host) }
                    td { (cert_state(c.info.as_ref())) }
                    td { (c.info.as_ref().map_or("–", |i| i.issuer.as_str())) }
                    td { (c.info.as_ref().map_or("–".into(), |i| rfc3339(i.not_after))) }
                    td { (c.source) }
                    td {
                        @if c.source != "acme" { "not renewed by roo" }
                        @else if let Some(at) = c.status.as_ref().and_then(|s| s.ari_renew_at) { (unix(at)) " (the CA's)" }
                        @else if let Some(i) = &c.info { (rfc3339(i.renew_at())) }
                        @else if let Some(s) = &c.status { "next attempt " (unix(s.next_attempt)) }
                    }
                    td.detail { @if let Some(s) = &c.status { @if let Some(e) = &s.last_error { (e) " (" (s.failures) " failure(s))" } } }
                }
            } }
        } }
    }
}

pub async fn certs(api: &Api) -> Result<Page, ApiError> {
    let rows = certificates(api).await?;
    let refs: Vec<&CertRow> = rows.iter().collect();
    let main = html! {
        h1 { "Certificates" }
        @if rows.is_empty() { p { "No certificate is stored." } } @else { (cert_table(&refs)) }
    };
    Ok(Page {
        title: "Certificates".into(),
        tab: Tab::Certificates,
        main,
        tools: None,
        live: true,
        address: None,
    })
}

/// The event types the activity filter offers.
const KINDS: [&str; 7] = [
    "route.",
    "rollout.",
    "certificate.",
    "node.",
    "leader.",
    "swarm.",
    "webhook.",
];

pub async fn activity(api: &Api, kind: &str) -> Result<Page, ApiError> {
    let kinds: Vec<String> = Some(kind.to_string())
        .filter(|k| !k.is_empty())
        .into_iter()
        .collect();
    let events = recent(api, ACTIVITY_EVENTS, &kinds).await?;
    let main = html! {
        h1 { "Activity" }
        p { "The last " (events.len()) " events" @if !kind.is_empty() { " of type " code { (kind) "*" } } ", newest first; new ones appear as they happen." }
        (event_rows(&events))
    };
    let tools = html! {
        form.tools method="get" action="/ui/events" {
            label for="type" { "Type" }
            select #type name="type" {
                option value="" selected[kind.is_empty()] { "every type" }
                @for k in KINDS { option value=(k) selected[kind == k] { (k) "*" } }
            }
            button type="submit" { "Show" }
        }
    };
    Ok(Page {
        title: "Activity".into(),
        tab: Tab::Activity,
        main,
        tools: Some(tools),
        live: true,
        address: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_keeps_common_lines_and_marks_the_rest() {
        let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
        let a = lines("{\n  a: 1,\n  b: 2\n}");
        let b = lines("{\n  a: 1,\n  b: 3,\n  c: 4\n}");
        let d = line_diff(&a, &b);
        let marks: String = d.iter().map(|(k, _)| *k).collect();
        assert_eq!(marks, "  -++ ");
        assert_eq!(d[2], ('-', "  b: 2"));
        assert!(line_diff(&[], &b).iter().all(|(k, _)| *k == '+'));
    }
}
