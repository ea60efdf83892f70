//! The API's errors: a status and a JSON body `{"error": "...", "field": "..."}` naming
//! what was wrong and, for a malformed request, which field. Internal errors are logged and
//! answered with their message, which (like every driftless error) carries no secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use driftless_engine::EngineError;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// 400: the request's `field` is wrong.
    pub fn bad_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: None,
        }
    }

    /// 401: no known bearer token.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "a bearer token is required (Authorization: Bearer TOKEN)".to_owned(),
            field: None,
        }
    }

    /// 403: the token may not do this.
    pub fn forbidden(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.to_owned(),
            field: None,
        }
    }

    /// 404: no run with this id.
    pub fn unknown_run(run_id: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no run {run_id:?} is recorded in the control plane"),
            field: None,
        }
    }

    /// 409: the request conflicts with the run's state.
    pub fn conflict(message: String) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message,
            field: None,
        }
    }

    /// 500 (or 503 when the control plane is out of reach).
    pub fn internal(error: &anyhow::Error) -> ApiError {
        let message = format!("{error:#}");
        tracing::warn!(error = %message, "an API request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            field: None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::UnknownRun(id) => ApiError::unknown_run(&id),
            EngineError::Run { .. } => ApiError::conflict(e.to_string()),
            other => ApiError::internal(&other.into()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(&e)
    }
}

impl From<driftless_control::ControlError> for ApiError {
    fn from(e: driftless_control::ControlError) -> ApiError {
        ApiError::internal(&e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self.field {
            Some(f) => json!({ "error": self.message, "field": f }),
            None => json!({ "error": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}
