//! `GET /v1/status` (every stage's latest state), `/metrics`, and the probes: `/healthz`
//! (the process serves) and `/readyz` (the control plane answers).

use axum::Json as Reply;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::auth::Access;
use super::error::ApiError;
use super::{ApiState, metrics, view};

/// `GET /v1/status`: per dataset and stage the state, divergent keys, lag and last runs.
pub async fn status(State(api): State<ApiState>, headers: HeaderMap) -> Result<Reply<Json>, ApiError> {
    api.tokens.require(&headers, Access::Read)?;
    let views = view::stages(&api).await?;
    let stages: Vec<Json> = views.iter().map(view::StageView::json).collect();
    Ok(Reply(json!({ "stages": stages })))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(api): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.tokens.require(&headers, Access::Read)?;
    let views = view::stages(&api).await?;
    let text = metrics::render(&api, &views).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the control plane answers, 503 (saying why) when not.
pub async fn readyz(State(api): State<ApiState>) -> Response {
    match api.control.held_runs().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the control plane does not answer: {e}\n"),
        )
            .into_response(),
    }
}
