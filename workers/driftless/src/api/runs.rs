//! `/v1/runs`: create a run for the fleet (the on-demand repair after a rollback), list
//! recent runs, read one's report, page through its divergences, approve a held one.

use std::collections::HashMap;

use axum::Json as Reply;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use driftless_engine::lifecycle::{self, Resume, StoredReport};
use serde_json::{Value as Json, json};

use super::ApiState;
use super::auth::Access;
use super::error::ApiError;
use super::request::{self, PAGE_DEFAULT};
use crate::{run, submit};

/// `POST /v1/runs`: 201 with the queued run's id.
pub async fn create(State(api): State<ApiState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    api.tokens.require(&headers, Access::Write)?;
    let (selection, mode) = request::new_run(&body, &api.loaded)?;
    let started_by = format!("api ({})", run::started_by());
    let run_id = submit::queue(&api.loaded, &api.control, &selection, mode, started_by).await?;
    tracing::info!(run = %run_id, mode = %mode, "run created through the API");
    let location = format!("/v1/runs/{run_id}");
    let body = Reply(json!({ "run_id": run_id, "status": "queued", "mode": mode }));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], body).into_response())
}

/// `GET /v1/runs?dataset=&limit=`: recent runs, newest first.
pub async fn list(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Reply<Json>, ApiError> {
    api.tokens.require(&headers, Access::Read)?;
    let limit = request::limit(&query, 20)?;
    let runs = api
        .control
        .recent_runs(query.get("dataset").map(String::as_str), limit)
        .await?;
    Ok(Reply(submit::runs_value(&runs)))
}

/// `GET /v1/runs/{id}`: the report contract once the run finished; its status before.
pub async fn show(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Reply<Json>, ApiError> {
    api.tokens.require(&headers, Access::Read)?;
    let answer = match lifecycle::read_report(&api.control, &id, false).await? {
        StoredReport::Unknown => return Err(ApiError::unknown_run(&id)),
        StoredReport::Finished(report) => serde_json::to_value(&report).map_err(|e| ApiError::internal(&e.into()))?,
        StoredReport::Pending(status) | StoredReport::Missing(status) => json!({ "run_id": id, "status": status }),
        StoredReport::Failed(error) => json!({ "run_id": id, "status": "failed", "error": error }),
    };
    Ok(Reply(answer))
}

/// `GET /v1/runs/{id}/divergences?stage=&dataset=&after=&limit=`: the divergences the run
/// detected last in a stage, in key order, a page at a time; `next` is the cursor of the
/// following page (`null` on the last).
pub async fn divergences(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Reply<Json>, ApiError> {
    api.tokens.require(&headers, Access::Read)?;
    let limit = request::limit(&query, PAGE_DEFAULT)?;
    let after = request::cursor(&query)?;
    let Some(stage) = query.get("stage") else {
        return Err(ApiError::bad_field(
            "stage",
            "stage is required: the stage whose divergences to list",
        ));
    };
    let dataset = dataset_of(&api, query.get("dataset"), stage)?;
    if api.control.run_info(&id).await?.is_none() {
        return Err(ApiError::unknown_run(&id));
    }
    let page = api
        .control
        .run_divergence_page(&id, &dataset, stage, after.as_deref(), limit)
        .await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|e| super::hex::encode(&e.key_bytes)))
        .flatten();
    let list: Vec<Json> = page
        .into_iter()
        .map(|e| {
            let key = serde_json::from_str(&e.key_json).unwrap_or(Json::String(e.key_json));
            json!({ "key": key, "kind": e.kind, "state": e.state })
        })
        .collect();
    Ok(Reply(
        json!({ "run_id": id, "dataset": dataset, "stage": stage, "divergences": list, "next": next }),
    ))
}

/// The dataset a divergence page reads: the one named, or the only one with `stage`.
fn dataset_of(api: &ApiState, named: Option<&String>, stage: &str) -> Result<String, ApiError> {
    let datasets = &api.loaded.config.datasets;
    let having: Vec<&str> = datasets
        .iter()
        .filter(|d| named.is_none_or(|n| d.name.get_ref() == n))
        .filter(|d| d.stages.iter().any(|s| s.stage_name() == stage))
        .map(|d| d.name.get_ref().as_str())
        .collect();
    match (having.as_slice(), named) {
        ([one], _) => Ok((*one).to_owned()),
        ([], Some(n)) => Err(ApiError::bad_field(
            "stage",
            format!("dataset {n:?} has no stage {stage:?}"),
        )),
        ([], None) => Err(ApiError::bad_field(
            "stage",
            format!("no dataset has a stage {stage:?}"),
        )),
        (many, _) => Err(ApiError::bad_field(
            "dataset",
            format!(
                "stage {stage:?} is in datasets {}; name one with dataset=",
                many.join(", ")
            ),
        )),
    }
}

/// `POST /v1/runs/{id}/approve`: releases a run the breaker held; a worker's driver takes it
/// up again and repairs the held stages up to what the run found. 409 for a run that is not
/// held (or was approved meanwhile), 404 for an unknown one.
pub async fn approve(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.tokens.require(&headers, Access::Write)?;
    let by = format!("api ({})", run::started_by());
    let approved = lifecycle::approve_run(&api.control, &id, &api.loaded.digest(), &by, Resume::Fleet).await?;
    let caps: Vec<Json> = approved
        .caps
        .iter()
        .map(|((d, s), n)| json!({ "dataset": d, "stage": s, "approved_keys": n }))
        .collect();
    tracing::info!(run = %id, "held run approved through the API");
    Ok((
        StatusCode::ACCEPTED,
        Reply(json!({ "run_id": id, "status": "queued", "approved": caps })),
    )
        .into_response())
}
