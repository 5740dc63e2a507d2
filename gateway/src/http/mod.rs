//! The HTTP API, in the gateway process: the wallet backend's calls, the auditors' reads, and
//! the operations endpoints (`/livez`, `/readyz`, `/metrics`, `/openapi.json`).
//!
//! A request passes, in order: the TLS accept loop ([`serve`]: `http.connections_max`, the
//! handshake and header timeouts), then `front` (a request id, the caller's token checked,
//! the caller's rate limit, `http.request_timeout_ms`, the security headers), then its handler,
//! which checks the caller's scope and reads its body through [`body::Json`] (size limit,
//! strict JSON). Every refusal is an [`error::ApiError`] with a code from the one list.

pub mod aliases;
pub mod auditor;
pub mod auth;
pub mod body;
pub mod client;
pub mod console;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod operator;
pub mod ops;
pub mod points;
pub mod wallets;

/// The development token issuer lives with the development PKI it is made with.
pub use crate::pki::dev_issuer;

use crate::audit::AuditLog;
use crate::config::{HttpSettings, Settings};
use crate::logs::{Throttled, LOG_INTERVAL};
use crate::metrics::Metrics;
use crate::readiness::Probes;
use crate::store::Store;
use auth::Caller;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::{ApiError, RequestContext, REQUEST};
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// What every handler can reach.
pub struct Api {
    pub settings: HttpSettings,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub probes: Probes,
    pub verifier: auth::Verifier,
    pub limiter: limits::CallerLimiter,
    /// The gateway's whole configuration (the auditor's reads open its write-once store).
    pub gateway_settings: Settings,
    /// The field cipher (the operators' key rotation).
    pub cipher: Arc<crate::keys::cipher::FieldCipher>,
    /// The pipeline's cache of devices (a suspension takes effect from the next request).
    pub devices: Arc<crate::pipeline::devices::DeviceCache>,
    /// Tells the device front to close a device's sessions now.
    pub disconnects: tokio::sync::broadcast::Sender<paygate_core::DeviceId>,
    /// Held by a key rotation: one at a time.
    pub rotation: tokio::sync::Mutex<()>,
    /// Held while the local copy of the audit store is updated and read.
    pub audit_copy_lock: tokio::sync::Mutex<()>,
}

/// The peer's address, put in every request by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The outcome of checking the request's bearer token, put in every request by `front`.
#[derive(Debug, Clone)]
enum Token {
    Absent,
    Checked(Result<Caller, ApiError>),
}

/// Every route, with its layers.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .merge(ops::routes())
        .merge(wallets::routes())
        .merge(aliases::routes())
        .merge(points::routes())
        .merge(operator::routes())
        .merge(idempotency::routes())
        .merge(auditor::routes())
        .merge(console::routes())
        .fallback(route_unknown)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(api.clone(), front))
        .with_state(api)
}

async fn route_unknown() -> ApiError {
    ApiError::new(ErrorCode::RouteUnknown, "no endpoint has this path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take this method",
    )
}

/// A client's `X-Request-Id` when it is short and plain, else a new one.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn bearer_of(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    Some(token.ok_or_else(|| {
        ApiError::new(
            ErrorCode::TokenInvalid,
            "the Authorization header is not \"Bearer <token>\"",
        )
    }))
}

/// The layer every request passes: request id, token, rate limit, timeout, headers.
async fn front(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let request_id = request_id_of(request.headers());
    let context = RequestContext {
        id: request_id.clone(),
        peer: request.extensions().get::<Peer>().map(|p| p.0),
    };
    REQUEST
        .scope(context, async move {
            let timeout = Duration::from_millis(api.settings.request_timeout_ms);
            let answer = async {
                let token = match bearer_of(request.headers()) {
                    None => Token::Absent,
                    Some(Err(refused)) => Token::Checked(Err(refused)),
                    Some(Ok(token)) => {
                        Token::Checked(api.verifier.verify(token, crate::clock::now_ms() / 1_000).await)
                    }
                };
                let peer = request.extensions().get::<Peer>().map(|p| p.0);
                let key = match &token {
                    Token::Checked(Ok(caller)) => caller.actor(),
                    _ => format!("ip:{}", peer.map(|p| p.ip().to_string()).unwrap_or_default()),
                };
                if let Err(refused) = api.limiter.check(&key) {
                    api.metrics.count_refusal(refused.code);
                    return refused.into_response();
                }
                request.extensions_mut().insert(token);
                next.run(request).await
            };
            let mut response = match tokio::time::timeout(timeout, answer).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    ErrorCode::RequestTimedOut,
                    "the request was not answered within http.request_timeout_ms; a write may still complete: retry with the same Idempotency-Key",
                )
                .into_response(),
            };
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert("x-request-id", value);
            }
            security_headers(headers);
            response
        })
        .await
}

fn security_headers(headers: &mut HeaderMap) {
    for (name, value) in [
        ("strict-transport-security", "max-age=31536000"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        if !headers.contains_key(name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

#[axum::async_trait]
impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    /// The verified caller. A missing or refused token is recorded in the audit trail
    /// (PCI DSS 10.2.1.4, invalid logical access attempts), within the caller's rate limit.
    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Caller, ApiError> {
        let checked = match parts.extensions.get::<Token>() {
            Some(Token::Checked(checked)) => checked.clone(),
            _ => Err(ApiError::new(
                ErrorCode::TokenMissing,
                "this call needs an Authorization: Bearer token",
            )),
        };
        if let Err(refused) = &checked {
            api.metrics.count_refusal(refused.code);
            let peer = parts.extensions.get::<Peer>().map(|p| p.0);
            let mut event = AuditEvent::new(
                crate::clock::now_ms(),
                EventType::AccessRefused,
                "api:unauthenticated",
                origin(peer),
                AuditOutcome::Failure,
                "http",
                format!("http:{}", route_of(parts)),
            );
            event.code = Some(refused.code.as_str().to_owned());
            event.detail = Some(refused.message.clone());
            if let Err(error) = api.audit.record(event).await {
                tracing::error!(%error, "an HTTP access refusal could not be audited");
            }
        }
        checked
    }
}

/// The route a request matched (`/v1/wallets/:wallet_id`), never the raw path: what a caller
/// without a token can put in the audit trail is bounded.
fn route_of(parts: &Parts) -> String {
    match parts.extensions.get::<axum::extract::MatchedPath>() {
        Some(route) => route.as_str().to_owned(),
        None => {
            let path = parts.uri.path();
            let cut = path.char_indices().nth(64).map_or(path.len(), |(at, _)| at);
            format!("{}(unrouted)", &path[..cut])
        }
    }
}

/// How the audit trail names where an HTTP request came from.
pub fn origin(peer: Option<SocketAddr>) -> String {
    match peer {
        Some(peer) => format!("https:{peer}"),
        None => "https:unknown".to_owned(),
    }
}

/// Accepts HTTPS connections until shutdown: at most `http.connections_max` at once (the
/// excess is closed at once), each handshake within `http.handshake_timeout_ms`.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = router(api.clone());
    let slots = Arc::new(Semaphore::new(api.settings.connections_max));
    let handshake_timeout = Duration::from_millis(api.settings.handshake_timeout_ms);
    let header_timeout = Duration::from_millis(api.settings.header_read_timeout_ms);
    let mut accept_failures = Throttled::every(LOG_INTERVAL);
    let mut over_capacity = Throttled::every(LOG_INTERVAL);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // out of descriptors and the like: wait rather than spin
                    if let Some(failures) = accept_failures.occurred() {
                        tracing::warn!(%error, failures, "accepting HTTP connections fails; backing off");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            api.metrics.count_refusal(ErrorCode::Overloaded);
            if let Some(refused) = over_capacity.occurred() {
                tracing::warn!(%peer, refused, "HTTP connections refused: http.connections_max reached");
            }
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let router = router.clone();
                    async move {
                        use tower::ServiceExt;
                        router.oneshot(request.map(axum::body::Body::new)).await
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "http connection ended with an error");
            }
        });
    }
}

/// The gateway's parts the API works with.
pub struct Services {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub probes: Probes,
    pub cipher: Arc<crate::keys::cipher::FieldCipher>,
    pub devices: Arc<crate::pipeline::devices::DeviceCache>,
    pub disconnects: tokio::sync::broadcast::Sender<paygate_core::DeviceId>,
}

/// Binds `http.listen` and serves the API until shutdown; returns the bound address.
pub async fn start(
    settings: &Settings,
    services: Services,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let Services {
        store,
        metrics,
        audit,
        probes,
        cipher,
        devices,
        disconnects,
    } = services;
    use anyhow::Context;
    let http = &settings.http;
    let verifier = auth::Verifier::open(&http.jwt, settings.resolve(&http.jwt.jwks_file))
        .await
        .map_err(anyhow::Error::msg)
        .context("opening http.jwt.jwks_file (`paygate certs init` makes a development one)")?;
    let acceptor = TlsAcceptor::from(crate::tls::http_server_config(settings)?);
    let listener = TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener {}", http.listen))?;
    let address = listener.local_addr()?;
    let api = Arc::new(Api {
        settings: http.clone(),
        limiter: limits::CallerLimiter::new(http),
        store,
        metrics,
        audit,
        probes,
        verifier,
        cipher,
        devices,
        disconnects,
        gateway_settings: settings.clone(),
        audit_copy_lock: tokio::sync::Mutex::new(()),
        rotation: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(sweep_callers(api.clone(), shutdown.clone()));
    tokio::spawn(serve(api, listener, acceptor, shutdown));
    tracing::info!(%address, "HTTP API listening");
    Ok(address)
}

/// Forgets idle callers of the rate limiter every 10 s until shutdown.
async fn sweep_callers(api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = every.tick() => api.limiter.sweep(),
            _ = shutdown.changed() => return,
        }
    }
}
