//! A HOSTILE Keystone of the tests' own: no real Keystone sends these answers. It gives one
//! canned answer to every request (a catalog naming a forbidden Glance, a huge 401, a gzip
//! bomb, a redirect inside), and a connection counter stands for an address pimage must
//! never connect to.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the hostile Keystone answers to every request.
#[derive(Clone)]
pub enum HostileAnswer {
    /// 201 with a token and a catalog whose only image endpoint is `glance`.
    Catalog { glance: String },
    /// 401 with a body of `bytes` zeros, streamed (never held in the test's memory).
    Huge401 { bytes: u64 },
    /// 201 whose body is `gzip` (a small gzip stream inflating to far more), sent with
    /// `Content-Encoding: gzip`.
    GzipBomb { gzip: Arc<Vec<u8>> },
    /// 302 to `location`.
    Redirect { location: String },
}

pub struct HostileKeystone {
    /// The "keystoneUrl" to publish with (`…/v3`).
    pub url: String,
}

impl HostileKeystone {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start(answer: HostileAnswer) -> HostileKeystone {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = serve(client, answer).await;
                });
            }
        });
        HostileKeystone { url }
    }
}

/// Reads one request (head and Content-Length body), then answers it.
async fn serve(mut client: TcpStream, answer: HostileAnswer) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(pos) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() - body_start < length {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    match answer {
        HostileAnswer::Catalog { glance } => {
            let body = serde_json::json!({"token": {
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "catalog": [{"type": "image", "name": "glance", "endpoints": [
                    {"interface": "public", "region": "RegionOne", "url": glance}]}]}})
            .to_string();
            let head = format!(
                "HTTP/1.1 201 Created\r\nX-Subject-Token: hostile-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            client.write_all(head.as_bytes()).await?;
            client.write_all(body.as_bytes()).await?;
        }
        HostileAnswer::Huge401 { bytes } => {
            let head = format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
            );
            client.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < bytes {
                let n = chunk.len().min((bytes - sent) as usize);
                client.write_all(&chunk[..n]).await?; // fails once the client hangs up
                sent += n as u64;
            }
        }
        HostileAnswer::GzipBomb { gzip } => {
            let head = format!(
                "HTTP/1.1 201 Created\r\nX-Subject-Token: hostile-token\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                gzip.len()
            );
            client.write_all(head.as_bytes()).await?;
            client.write_all(&gzip).await?;
        }
        HostileAnswer::Redirect { location } => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(head.as_bytes()).await?;
        }
    }
    client.shutdown().await
}

/// Listens on 0.0.0.0 (every local address: `http://0.0.0.0:PORT/` and the IPv4 forms of
/// it reach it) and counts the connections accepted, closing each at once.
pub struct ConnectionCounter {
    pub port: u16,
    accepted: Arc<AtomicU32>,
}

impl ConnectionCounter {
    pub async fn start() -> ConnectionCounter {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU32::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        ConnectionCounter { port, accepted }
    }

    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
}
