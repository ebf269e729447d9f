//! A small fault-injecting TCP proxy, placed between the worker and the real Glance.
//!
//! It reads each connection's HTTP request head (every connection carries one request:
//! pimage does not pool Glance connections, and Glance answers `Connection: close`), then
//! either answers an injected status itself, never answers at all (a hung Glance), or pipes
//! the bytes to Glance, optionally slowly or cutting the connection (RST) after some bytes
//! of the request body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
enum Fault {
    /// Answer `status` to the next `remaining` requests whose method and path match.
    Status {
        method: String,
        path_contains: String,
        status: u16,
        retry_after: Option<u64>,
        remaining: u32,
    },
    /// Hold the next `remaining` matching requests open without ever answering.
    Hang {
        method: String,
        path_contains: String,
        remaining: u32,
    },
    /// Reset the connection of the next matching request once `after` body bytes went through.
    ResetAfter {
        method: String,
        path_contains: String,
        after: u64,
        remaining: u32,
    },
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    /// Bytes per second for request bodies; 0 = full speed.
    throttle: u64,
    /// Every request head seen: "METHOD path".
    seen: Vec<String>,
    /// The `X-Auth-Token` of each request seen ("" without one), in the order of `seen`.
    tokens: Vec<String>,
    /// Each request's head without its token, in the order of `seen`.
    heads: Vec<String>,
    injected: u32,
    /// PUT requests (uploads) being forwarded right now.
    uploads: u32,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("127.0.0.1:9292").
    pub async fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_on("127.0.0.1:0", upstream).await
    }

    /// The same on a given address (one a lab catalog names).
    pub async fn start_on(listen: &str, upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind(listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.to_string();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (state, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = handle(client, &upstream, state).await;
                });
            }
        });
        FaultProxy { url, state }
    }

    pub fn fail_with_status(&self, method: &str, path_contains: &str, status: u16, count: u32) {
        self.state.lock().unwrap().faults.push(Fault::Status {
            method: method.into(),
            path_contains: path_contains.into(),
            status,
            retry_after: None,
            remaining: count,
        });
    }

    pub fn fail_with_retry_after(
        &self,
        method: &str,
        path_contains: &str,
        status: u16,
        secs: u64,
        count: u32,
    ) {
        self.state.lock().unwrap().faults.push(Fault::Status {
            method: method.into(),
            path_contains: path_contains.into(),
            status,
            retry_after: Some(secs),
            remaining: count,
        });
    }

    pub fn reset_after(&self, method: &str, path_contains: &str, after_bytes: u64, count: u32) {
        self.state.lock().unwrap().faults.push(Fault::ResetAfter {
            method: method.into(),
            path_contains: path_contains.into(),
            after: after_bytes,
            remaining: count,
        });
    }

    /// The next `count` matching requests are never answered (the connection stays open).
    pub fn hang(&self, method: &str, path_contains: &str, count: u32) {
        self.state.lock().unwrap().faults.push(Fault::Hang {
            method: method.into(),
            path_contains: path_contains.into(),
            remaining: count,
        });
    }

    /// Limits request bodies to `bytes_per_sec` (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.lock().unwrap().throttle = bytes_per_sec;
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The value of header `name` in each request seen whose path ends with `path_end`.
    pub fn header_of(&self, method: &str, path_end: &str, name: &str) -> Vec<Option<String>> {
        let state = self.state.lock().unwrap();
        state
            .seen
            .iter()
            .zip(&state.heads)
            .filter(|(seen, _)| seen.starts_with(method) && seen.ends_with(path_end))
            .map(|(_, head)| {
                head.lines().find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
            })
            .collect()
    }

    /// Every request seen with the `X-Auth-Token` it carried ("" without one): the tests'
    /// own proxy reads it to revoke it or to tell tokens apart; pimage never shows it.
    pub fn seen_with_tokens(&self) -> Vec<(String, String)> {
        let state = self.state.lock().unwrap();
        state
            .seen
            .iter()
            .cloned()
            .zip(state.tokens.iter().cloned())
            .collect()
    }

    /// Uploads (PUT requests) being forwarded to Glance right now.
    pub fn uploads_in_flight(&self) -> u32 {
        self.state.lock().unwrap().uploads
    }

    pub fn injected(&self) -> u32 {
        self.state.lock().unwrap().injected
    }
}

enum Action {
    Hang,
    Answer {
        status: u16,
        retry_after: Option<u64>,
    },
    Forward {
        reset_after: Option<u64>,
        throttle: u64,
    },
}

fn decide(state: &Mutex<State>, method: &str, path: &str, token: String, head: &str) -> Action {
    let mut s = state.lock().unwrap();
    s.seen.push(format!("{method} {path}"));
    s.tokens.push(token);
    let untokened = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("x-auth-token"));
    s.heads.push(untokened.collect::<Vec<_>>().join("\n"));
    let throttle = s.throttle;
    let mut action = Action::Forward {
        reset_after: None,
        throttle,
    };
    for fault in s.faults.iter_mut() {
        match fault {
            Fault::Status {
                method: m,
                path_contains,
                status,
                retry_after,
                remaining,
            } if *remaining > 0 && m == method && path.contains(path_contains.as_str()) => {
                *remaining -= 1;
                action = Action::Answer {
                    status: *status,
                    retry_after: *retry_after,
                };
                break;
            }
            Fault::Hang {
                method: m,
                path_contains,
                remaining,
            } if *remaining > 0 && m == method && path.contains(path_contains.as_str()) => {
                *remaining -= 1;
                action = Action::Hang;
                break;
            }
            Fault::ResetAfter {
                method: m,
                path_contains,
                after,
                remaining,
            } if *remaining > 0 && m == method && path.contains(path_contains.as_str()) => {
                *remaining -= 1;
                action = Action::Forward {
                    reset_after: Some(*after),
                    throttle,
                };
                break;
            }
            _ => {}
        }
    }
    if !matches!(
        action,
        Action::Forward {
            reset_after: None,
            ..
        }
    ) {
        s.injected += 1;
    }
    action
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    // Read the request head.
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_string();
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let content_length: u64 = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let already = (head.len() - body_start) as u64;

    let token = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-auth-token")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    match decide(&state, &method, &path, token, &text) {
        Action::Hang => {
            // Read (and drop) whatever comes, answer nothing, until the client gives up.
            while client.read(&mut buf).await? > 0 {}
        }
        Action::Answer {
            status,
            retry_after,
        } => {
            // Take the whole body first (at the throttled rate), as a real server would, so
            // the client reads the answer.
            let throttle = state.lock().unwrap().throttle;
            let started = tokio::time::Instant::now();
            let mut read = already;
            while read < content_length {
                let n = client.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                if throttle > 0 {
                    tokio::time::sleep_until(
                        started + Duration::from_secs_f64(read as f64 / throttle as f64),
                    )
                    .await;
                }
            }
            let body = format!(
                r#"{{"message": "injected by the test proxy", "code": "{status}", "title": "injected"}}"#
            );
            let extra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let reply = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(reply.as_bytes()).await?;
            client.shutdown().await?;
        }
        Action::Forward {
            reset_after,
            throttle,
        } => {
            let upload = u32::from(method == "PUT");
            state.lock().unwrap().uploads += upload;
            let result = forward(
                client,
                upstream,
                head,
                already,
                content_length,
                reset_after,
                throttle,
            )
            .await;
            state.lock().unwrap().uploads -= upload;
            result?;
        }
    }
    Ok(())
}

async fn forward(
    client: TcpStream,
    upstream: &str,
    head: Vec<u8>,
    already: u64,
    content_length: u64,
    reset_after: Option<u64>,
    throttle: u64,
) -> std::io::Result<()> {
    {
        {
            let server = TcpStream::connect(upstream).await?;
            if reset_after.is_some() {
                // Closing these sockets then sends RST, as a dropped link or a crashed LB would.
                client.set_zero_linger()?;
                server.set_zero_linger()?;
            }
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            server_write.write_all(&head).await?;
            let to_client =
                tokio::spawn(
                    async move { tokio::io::copy(&mut server_read, &mut client_write).await },
                );
            let mut forwarded = already;
            let started = tokio::time::Instant::now();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if reset_after.is_some_and(|limit| forwarded >= limit) {
                    to_client.abort();
                    let _ = to_client.await;
                    return Ok(()); // both sockets drop here: RST both ways
                }
                if forwarded >= content_length {
                    break;
                }
                let n = client_read.read(&mut chunk).await.unwrap_or_default();
                if n == 0 {
                    // The client went away mid-body: so does the upstream request.
                    to_client.abort();
                    return Ok(());
                }
                server_write.write_all(&chunk[..n]).await?;
                forwarded += n as u64;
                if throttle > 0 {
                    let due = Duration::from_secs_f64(forwarded as f64 / throttle as f64);
                    tokio::time::sleep_until(started + due).await;
                }
            }
            let _ = to_client.await;
        }
    }
    Ok(())
}
