//! Request bodies: JSON only, at most `http.body_bytes_max`, parsed strictly (unknown fields,
//! duplicate keys and wrong types are refused `MALFORMED_REQUEST`).

use super::error::ApiError;
use super::Api;
use axum::extract::{FromRequest, Request};
use paygate_core::ErrorCode;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A JSON body, with the bytes it was read from (idempotency compares their hash).
#[derive(Debug)]
pub struct Json<T> {
    pub value: T,
    pub bytes: axum::body::Bytes,
}

#[axum::async_trait]
impl<T: DeserializeOwned> FromRequest<Arc<Api>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, api: &Arc<Api>) -> Result<Json<T>, ApiError> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedContentType,
                "the body must be application/json",
            ));
        }
        let limit = api.settings.body_bytes_max;
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::BodyTooLarge,
                    format!("the body is larger than http.body_bytes_max ({limit} bytes)"),
                )
            })?;
        paygate_core::strict_json::reject_duplicate_keys(&bytes).map_err(malformed)?;
        let value = serde_json::from_slice(&bytes).map_err(malformed)?;
        Ok(Json { value, bytes })
    }
}

fn malformed(error: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedRequest,
        format!("the body is not the JSON this call takes: {error}"),
    )
}

/// The one parameter of a path (`/v1/wallets/:wallet_id`), refused `MALFORMED_REQUEST` when
/// it cannot be read (bad percent-encoding, not UTF-8).
#[derive(Debug)]
pub struct PathText(pub String);

#[axum::async_trait]
impl axum::extract::FromRequestParts<Arc<Api>> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Arc<Api>,
    ) -> Result<PathText, ApiError> {
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, api)
                .await
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::MalformedRequest,
                        format!("the path is not valid: {e}"),
                    )
                })?;
        Ok(PathText(text))
    }
}
