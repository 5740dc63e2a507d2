//! Operations: `/livez` (the process answers), `/readyz` (the parts a payment needs are
//! usable), `/metrics` (Prometheus text) and `/openapi.json` (this API, generated from the
//! handlers). None needs a token: probes and scrapers reach them from the cluster network.

use super::error::ErrorBody;
use super::{aliases, auditor, idempotency, operator, points, wallets, Api};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paygate HTTP API",
        description = "The wallet backend's, operators' and auditors' API. Errors are `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a code from docs/protocol.md.",
    ),
    paths(
        livez, readyz, metrics,
        wallets::open_wallet, wallets::wallet, wallets::set_tier, wallets::history, wallets::points,
        idempotency::status, aliases::link, aliases::lookup, points::lots,
        auditor::records, auditor::verify, auditor::proofs, auditor::public_key,
        operator::accounts::open_merchant, operator::accounts::open_agent, operator::accounts::set_tier,
        operator::devices::enrol_device, operator::devices::set_device_status,
        operator::devices::revoke_device, operator::enrolment::issue_token, operator::enrolment::enrol,
        operator::fundings::request_funding, operator::fundings::funding,
        operator::fundings::approve_funding, operator::fundings::reject_funding,
        operator::keys::rotate_keys, operator::keys::limits,
    ),
    components(schemas(ErrorBody, Ready)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The process runs and answers.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "alive", body = String)))]
async fn livez() -> &'static str {
    "ok\n"
}

/// Readiness, part by part.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub database: bool,
    pub audit_journal: bool,
    pub key_provider: bool,
    pub broker: bool,
    pub pipeline: bool,
}

/// Ready only when the database, the audit journal, the key provider, the broker and the
/// pipeline are all usable; 503 otherwise, with the part that is not.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "ready", body = Ready),
    (status = 503, description = "a part is not usable", body = Ready),
))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let parts = api.probes.readiness().await;
    let ready = parts.ready();
    let body = Ready {
        ready,
        database: parts.database,
        audit_journal: parts.audit_journal,
        key_provider: parts.key_provider,
        broker: parts.broker,
        pipeline: parts.pipeline,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Counters and gauges in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let mut text = api.metrics.render_prometheus();
    let calls = api.cipher.provider().calls();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let extra = format!(
        "paygate_http_callers_tracked {}\n\
         paygate_key_provider_calls_total{{op=\"generate\"}} {}\n\
         paygate_key_provider_calls_total{{op=\"unwrap\"}} {}\n\
         paygate_key_provider_calls_total{{op=\"rewrap\"}} {}\n\
         paygate_key_provider_failures_total {}\n\
         paygate_key_provider_retries_total {}\n",
        api.limiter.callers(),
        count(&calls.generate),
        count(&calls.unwrap),
        count(&calls.rewrap),
        count(&calls.failures),
        count(&calls.retries),
    );
    text.push_str(&crate::metrics::typed(&extra));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
