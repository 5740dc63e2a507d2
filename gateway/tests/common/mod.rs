//! Shared by the tests that need moto's server (S3 and KMS) or a faulty link in front of it.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A moto server on a free loopback port, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_moto() -> Moto {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let moto = Moto {
        child: Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (scripts/test installs it)"),
        port,
    };
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(moto); // kills and reaps the child
    panic!("moto_server did not start on port {port}");
}

pub fn aws_env() {
    // moto accepts any credentials; these keep the SDK from looking further
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
}

/// A TCP proxy in front of moto that can be switched off (dropping every connection) and on,
/// or made to answer the next requests with an AWS throttling error.
pub struct Switch {
    pub up: Arc<AtomicBool>,
    /// While set, new connections are accepted and then never answered (nothing read, nothing
    /// written) until it is cleared: an endpoint that stalls.
    pub stall: Arc<AtomicBool>,
    /// Requests still to answer with the error `fail_with` (HTTP 400) instead of forwarding.
    pub throttle_next: Arc<AtomicU32>,
    /// The AWS error type those answers carry; `ThrottlingException` unless changed.
    pub fail_with: Arc<std::sync::Mutex<String>>,
    pub address: SocketAddr,
}

/// Reads one HTTP request (headers and a Content-Length body) and answers it with an AWS JSON
/// protocol error of type `error_type`.
async fn answer_with_error(mut inbound: TcpStream, error_type: String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = inbound.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                break;
            }
        }
    }
    let body = format!(r#"{{"__type":"{error_type}","message":"injected by the test"}}"#);
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {error_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = inbound.write_all(response.as_bytes()).await;
}

pub async fn start_switch(target: u16) -> Switch {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let stall = Arc::new(AtomicBool::new(false));
    let stalling = stall.clone();
    let throttle_next = Arc::new(AtomicU32::new(0));
    let fail_with = Arc::new(std::sync::Mutex::new("ThrottlingException".to_owned()));
    let flag = up.clone();
    let throttle = throttle_next.clone();
    let error_type = fail_with.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if !flag.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            if stalling.load(Ordering::SeqCst) {
                let stalling = stalling.clone();
                tokio::spawn(async move {
                    while stalling.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    drop(inbound);
                });
                continue;
            }
            let throttled = throttle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if throttled {
                let kind = error_type.lock().unwrap().clone();
                tokio::spawn(answer_with_error(inbound, kind));
                continue;
            }
            let flag = flag.clone();
            let stalling = stalling.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                {
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                                if !flag.load(Ordering::SeqCst) {
                                    return; // the link goes down: both sockets drop
                                }
                                if stalling.load(Ordering::SeqCst) {
                                    break; // a pooled connection stalls too
                                }
                            }
                        }
                    }
                }
                while stalling.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                drop(inbound);
            });
        }
    });
    Switch {
        up,
        stall,
        throttle_next,
        fail_with,
        address,
    }
}
