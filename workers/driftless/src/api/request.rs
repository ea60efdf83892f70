//! Reading requests by hand, so that a 400 names the field: a run to create from a JSON
//! body, and page parameters from the query string.

use std::collections::HashMap;

use driftless_engine::Mode;
use serde_json::{Map, Value as Json};

use super::error::ApiError;
use crate::config::Loaded;
use crate::run::{KeyList, Selection, check_selection};

/// The fields `POST /v1/runs` takes.
const RUN_FIELDS: &[&str] = &["dataset", "stages", "mode", "dry_run", "keys", "since"];

/// Page sizes: the default and the most one request may ask for.
pub const PAGE_DEFAULT: u32 = 100;
/// The largest page.
pub const PAGE_MAX: u32 = 1000;

/// The run a `POST /v1/runs` body asks for, checked against the config.
pub fn new_run(body: &[u8], loaded: &Loaded) -> Result<(Selection, Mode), ApiError> {
    let value: Json =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Json::Object(fields) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|k| !RUN_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_field(
            unknown,
            format!("unknown field {unknown:?} (expected {})", RUN_FIELDS.join(", ")),
        ));
    }
    let mode = match fields.get("mode") {
        Some(Json::String(m)) if m == "scan" => Mode::Scan,
        Some(Json::String(m)) if m == "repair" => Mode::Repair,
        Some(other) => {
            return Err(ApiError::bad_field(
                "mode",
                format!("mode must be \"scan\" or \"repair\", not {other}"),
            ));
        }
        None => return Err(ApiError::bad_field("mode", "mode is required: \"scan\" or \"repair\"")),
    };
    let dry_run = match fields.get("dry_run") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_field(
                "dry_run",
                format!("dry_run must be true or false, not {other}"),
            ));
        }
    };
    if dry_run && mode == Mode::Scan {
        return Err(ApiError::bad_field(
            "dry_run",
            "dry_run applies to repair runs; a scan writes nothing anyway",
        ));
    }
    let datasets = dataset(&fields, loaded)?;
    let stages = strings(&fields, "stages")?;
    let selection = Selection::new(datasets, stages, keys(&fields)?, since(&fields)?, dry_run);
    check_selection(loaded, &selection).map_err(|e| ApiError::bad_field("stages", format!("{e:#}")))?;
    Ok((selection, mode))
}

fn dataset(fields: &Map<String, Json>, loaded: &Loaded) -> Result<Vec<String>, ApiError> {
    let name = match fields.get("dataset") {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::String(n)) => n.clone(),
        Some(other) => {
            return Err(ApiError::bad_field(
                "dataset",
                format!("dataset must be a dataset's name, not {other}"),
            ));
        }
    };
    loaded
        .config
        .select(std::slice::from_ref(&name), &loaded.path)
        .map_err(|e| ApiError::bad_field("dataset", format!("{e:#}")))?;
    Ok(vec![name])
}

fn strings(fields: &Map<String, Json>, field: &str) -> Result<Vec<String>, ApiError> {
    match fields.get(field) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad_field(field, format!("{field} must be an array of names, and {i} is not one"))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::bad_field(
            field,
            format!("{field} must be an array of names, not {other}"),
        )),
    }
}

fn keys(fields: &Map<String, Json>) -> Result<Option<KeyList>, ApiError> {
    match fields.get("keys") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(keys)) if keys.is_empty() => Err(ApiError::bad_field(
            "keys",
            "keys is empty; leave it out to cover every key",
        )),
        Some(Json::Array(keys)) => Ok(Some((
            "the request's keys".to_owned(),
            keys.iter().cloned().enumerate().map(|(i, k)| (i + 1, k)).collect(),
        ))),
        Some(other) => Err(ApiError::bad_field(
            "keys",
            format!("keys must be an array of keys as reports print them ({{\"id\": 5}}), not {other}"),
        )),
    }
}

fn since(fields: &Map<String, Json>) -> Result<Option<i64>, ApiError> {
    match fields.get("since") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => driftless_core::value::parse_timestamp(s).map(Some).ok_or_else(|| {
            ApiError::bad_field(
                "since",
                format!("since {s:?} is not a timestamp (RFC 3339, e.g. 2026-12-01T10:00:00Z)"),
            )
        }),
        Some(other) => Err(ApiError::bad_field(
            "since",
            format!("since must be an RFC 3339 timestamp, not {other}"),
        )),
    }
}

/// `limit` of a query: `default` when absent, at most [`PAGE_MAX`].
pub fn limit(query: &HashMap<String, String>, default: u32) -> Result<u32, ApiError> {
    let Some(text) = query.get("limit") else {
        return Ok(default);
    };
    match text.parse::<u32>() {
        Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_field(
            "limit",
            format!("limit must be a whole number from 1 to {PAGE_MAX}, not {text:?}"),
        )),
    }
}

/// The `after` cursor of a divergence page: the hex of the previous page's last key.
pub fn cursor(query: &HashMap<String, String>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(text) = query.get("after").filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    super::hex::decode(text)
        .map(Some)
        .ok_or_else(|| ApiError::bad_field("after", "after must be the `next` cursor of the previous page"))
}
