//! The tests' client of the gateway's HTTP API: the gateway's own client (one connection per
//! request, trusting the development CA), so a test sees exactly the status, headers and bytes
//! the gateway sent; the helpers below unwrap, as tests do.

use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;

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
    client: paygate_gateway::http::client::ApiClient,
}

impl HttpClient {
    pub fn new(address: SocketAddr, ca_file: &Path) -> HttpClient {
        HttpClient {
            client: paygate_gateway::http::client::ApiClient::new(
                &format!("https://127.0.0.1:{}", address.port()),
                ca_file,
            )
            .unwrap(),
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
        let reply = self.client.send(method, path, headers, body).await?;
        Ok(Answer {
            status: reply.status,
            headers: reply.headers,
            body: reply.body,
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
