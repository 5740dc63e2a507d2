//! A plain HTTPS client of this API, for the CLI's commands that go through it (and the tests):
//! one connection per request, trusting a given CA, returning the status, headers and bytes the
//! gateway sent.

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// What the gateway answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A refusal's stable code (`error.code`), if it is one.
    pub fn code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }
}

pub struct ApiClient {
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl ApiClient {
    /// A client of `url` (`https://host:port`), trusting the CA certificates in `ca_file`.
    pub fn new(url: &str, ca_file: &Path) -> Result<ApiClient> {
        let rest = url
            .strip_prefix("https://")
            .context("the API address is https://host:port")?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().context("the API port")?),
            None => (rest, 443),
        };
        if host.is_empty() || host.contains('/') {
            bail!("the API address is https://host:port");
        }
        let pem = std::fs::read(ca_file)
            .with_context(|| format!("reading the API's CA file {}", ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.context("the API's CA file")?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiClient {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends one request; a body goes as `application/json` unless `headers` name a type.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let name = rustls_pki_types::ServerName::try_from(self.host.clone())?;
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host.as_str());
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
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
