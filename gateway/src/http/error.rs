//! Every HTTP refusal is one shape: `{"error": {"code", "message", "request_id"}}`, its
//! status taken from the code ([`ErrorCode::http_status`], the one mapping shared with MQTT).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paygate_core::ErrorCode;
use serde::Serialize;

/// What the front layer knows of the request being answered.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub peer: Option<std::net::SocketAddr>,
}

tokio::task_local! {
    /// The request being answered (set by the front layer).
    pub static REQUEST: RequestContext;
}

/// The request id of the request this task is answering, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// The peer of the request this task is answering, if known.
pub fn current_peer() -> Option<std::net::SocketAddr> {
    REQUEST.try_with(|r| r.peer).ok().flatten()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `OVERLOADED`: when to try again, sent as `Retry-After` (whole seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "an HTTP request failed");
        ApiError::new(
            ErrorCode::InternalError,
            "the gateway failed; nothing was changed",
        )
    }
}

impl ApiError {
    /// The refusal's body, as [`IntoResponse`] sends it.
    pub fn body_json(&self) -> Result<String, ApiError> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
                request_id: current_request_id(),
            },
        };
        serde_json::to_string(&body).map_err(ApiError::internal)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        match error {
            crate::store::StoreError::Refused(code) => ApiError::new(code, code.description()),
            other => ApiError::internal(other),
        }
    }
}

/// The body of every refusal, as documented in the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code from the closed list (docs/protocol.md).
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                request_id: current_request_id(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}
