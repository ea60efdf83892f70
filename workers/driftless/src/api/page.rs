//! The status page: server-side HTML at `/` (no JavaScript), per dataset and stage the state,
//! the first divergent keys, lag, queue, last good run, and the recent runs with links to
//! their reports (`/runs/{id}`). Every value is escaped by maud's `html!`, so a key holding
//! `<script>` shows as text. It takes the API's tokens: a bearer token, Basic credentials
//! whose password is a token, or the login form's cookie.

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use driftless_control::RunSummary;
use driftless_engine::lifecycle::{self, StoredReport};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::error::ApiError;
use super::view::{self, Condition, StageView};
use super::{ApiState, timestamp};

/// Divergent keys shown per stage.
const KEYS_SHOWN: u32 = 5;
/// Recent runs listed.
const RUNS_SHOWN: u32 = 20;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}code{font-size:12px}.consistent{color:#1a7f37}.drift,.dead{color:#b35900}\
.held{color:#c00;font-weight:bold}.repairing{color:#0550ae}.unknown{color:#777}";

/// The login form's body.
#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

fn page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) }
                    style { (PreEscaped(STYLE)) }
                }
                body { (body) }
            }
        }
        .into_string(),
    )
}

fn login_form(message: Option<&str>) -> Response {
    let body = html! {
        h1 { "driftless" }
        @if let Some(m) = message { p class="held" { (m) } }
        form method="post" action="/login" {
            label { "API token " input type="password" name="token" autofocus; }
            " " button type="submit" { "Sign in" }
        }
    };
    // The challenge lets a browser send the credentials of `http://driftless:TOKEN@host/` (or
    // ask for them); cancelling it shows this form.
    let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"driftless\", charset=\"UTF-8\"")];
    (StatusCode::UNAUTHORIZED, challenge, page("driftless: sign in", body)).into_response()
}

/// `POST /login`: a known token sets the cookie and goes to the page.
pub async fn login(State(api): State<ApiState>, Form(form): Form<Login>) -> Response {
    match api.tokens.login_cookie(form.token.trim(), api.tls) {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        None => login_form(Some("That token is not known.")),
    }
}

/// `GET /`: the status page.
pub async fn status(State(api): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !api.tokens.page_access(&headers) {
        return Ok(login_form(None));
    }
    let views = view::stages(&api).await?;
    let mut rows = Vec::new();
    for v in &views {
        rows.push(stage_row(&api, v).await?);
    }
    let runs = api.control.recent_runs(None, RUNS_SHOWN).await?;
    let body = html! {
        h1 { "driftless" }
        p { "As of " (timestamp(driftless_engine::context::now_us())) " (UTC), from the control plane." }
        table {
            tr { th { "dataset" } th { "stage" } th { "state" } th { "divergent" } th { "lag" }
                 th { "queue" } th { "last good run" } th { "latest run" } }
            @for row in &rows { (row) }
        }
        h2 { "Recent runs" }
        (runs_table(&runs))
    };
    Ok(page("driftless status", body).into_response())
}

async fn stage_row(api: &ApiState, v: &StageView) -> Result<Markup, ApiError> {
    let condition = v.condition();
    let keys = match &v.state.last_run {
        Some(run) if v.divergent() > 0 => {
            let page = api
                .control
                .run_divergence_page(&run.run_id, &v.dataset, &v.stage, None, KEYS_SHOWN)
                .await?;
            page.into_iter().map(|e| (e.key_json, e.kind)).collect()
        }
        _ => Vec::new(),
    };
    let depth = &v.state.depth;
    Ok(html! {
        tr {
            td { (v.dataset) }
            td { (v.stage) }
            td class=(condition.as_str()) {
                (condition.as_str())
                @if v.blackout { " (maintenance window)" }
                @if let (Condition::Held, Some(run)) = (condition, &v.state.last_run) {
                    br; "approve: " code { "driftless repair --approve " (run.run_id) }
                    br; "or " code { "POST /v1/runs/" (run.run_id) "/approve" }
                }
            }
            td {
                (v.divergent())
                @for (key, kind) in &keys { br; code { (key) } " " (kind) }
                @if v.divergent() > keys.len() as i64 && !keys.is_empty() { br; "…" }
            }
            td { (v.lag.map_or("-".to_owned(), human)) }
            td { (depth.live) " pending, " (depth.stale) " stale, " (depth.dead) " dead" }
            td { (run_link(v.state.last_good.as_ref().map(|r| (&r.run_id, r.finished_us)))) }
            td { (run_link(v.state.last_run.as_ref().map(|r| (&r.run_id, r.finished_us)))) }
        }
    })
}

fn run_link(run: Option<(&String, i64)>) -> Markup {
    html! {
        @match run {
            Some((id, finished)) => { a href=(format!("/runs/{id}")) { (timestamp(finished)) } }
            None => { "never" }
        }
    }
}

fn runs_table(runs: &[RunSummary]) -> Markup {
    html! {
        table {
            tr { th { "run" } th { "mode" } th { "status" } th { "started" } th { "finished" }
                 th { "divergent" } th { "started by" } }
            @for r in runs {
                tr {
                    td { a href=(format!("/runs/{}", r.run_id)) { code { (r.run_id) } } }
                    td { (r.mode.as_str()) }
                    td { (r.status.as_str()) }
                    td { (timestamp(r.started_us)) }
                    td { (r.finished_us.map(timestamp).unwrap_or_default()) }
                    td { (r.divergent) }
                    td { (r.started_by) }
                }
            }
        }
    }
}

/// `GET /runs/{id}`: one run's report, as the JSON contract, on a page.
pub async fn run(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !api.tokens.page_access(&headers) {
        return Ok(login_form(None));
    }
    let text = match lifecycle::read_report(&api.control, &id, false).await? {
        StoredReport::Unknown => return Err(ApiError::unknown_run(&id)),
        StoredReport::Finished(report) => serde_json::to_string_pretty(&report).unwrap_or_default(),
        StoredReport::Pending(status) | StoredReport::Missing(status) => format!("status: {status}"),
        StoredReport::Failed(error) => format!("failed: {error}"),
    };
    let body = html! {
        p { a href="/" { "← status" } }
        h1 { "Run " code { (id) } }
        pre { (text) }
    };
    Ok(page(&format!("driftless run {id}"), body).into_response())
}

/// A wait as people say it: `3m 12s`.
fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
