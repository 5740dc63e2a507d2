//! A plain HTTPS client for the gateway's HTTP API: one connection per request, trusting the
//! development CA, so a test sees exactly the status, headers and bytes the gateway sent.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The stable code of a refusal (`error.code`).
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct HttpClient {
    address: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl HttpClient {
    pub fn new(address: SocketAddr, ca_file: &Path) -> HttpClient {
        let mut config = (*super::tls_client_config(ca_file, None)).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpClient {
            address,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Sends one request; `headers` are added as given (a body gets `content-type:
    /// application/json` unless a content type is among them).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let tcp = tokio::net::TcpStream::connect(self.address).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        let has_type = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(bytes::Bytes::copy_from_slice(
            body.unwrap_or_default(),
        )))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        let bearer = format!("Bearer {token}");
        self.send("GET", path, &[("authorization", &bearer)], None)
            .await
            .unwrap()
    }

    /// A write with a bearer token and an idempotency key.
    pub async fn write(
        &self,
        method: &str,
        path: &str,
        token: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> Answer {
        let bearer = format!("Bearer {token}");
        let body = body.to_string();
        self.send(
            method,
            path,
            &[("authorization", &bearer), ("idempotency-key", key)],
            Some(body.as_bytes()),
        )
        .await
        .unwrap()
    }
}
