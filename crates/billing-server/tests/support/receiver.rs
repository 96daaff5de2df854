//! A customer's webhook endpoint, for tests: a real HTTP server on
//! loopback that records every request and answers as the test scripts it.
//! It verifies Standard Webhooks signatures with its own code (HMAC from
//! `ring`, not the service's signing module), as a customer's would.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Whether any of the header's signatures is `secret`'s, and the
    /// timestamp within five minutes of now (as the specification asks of
    /// receivers).
    pub fn signed_by(&self, secret: &str) -> bool {
        let key_bytes = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
            .expect("base64");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
        let signed = format!("{}.{}.{}", self.webhook_id, self.timestamp, self.body);
        let expected = STANDARD.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref());
        let fresh = self
            .timestamp
            .parse::<i64>()
            .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
        fresh
            && self
                .signature
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .any(|s| s == expected)
    }
}

/// An answer to give: status, extra headers, and a delay before it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// The body (a short JSON acknowledgement unless set).
    pub body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: None,
        }
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Answers for the next requests, in turn; then `otherwise`.
    script: VecDeque<Reply>,
    otherwise: Option<Reply>,
    /// Requests being answered now, by webhook id (to catch two at once).
    in_flight: Vec<String>,
    overlaps: Vec<String>,
}

/// The endpoint; it stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// An endpoint answering 200 to everything.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these answers, in turn.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Every request after the script gets this answer (200 by default).
    pub fn otherwise(&self, reply: Reply) {
        self.state.lock().unwrap().otherwise = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Webhook ids that were being answered twice at the same time.
    pub fn overlaps(&self) -> Vec<String> {
        self.state.lock().unwrap().overlaps.clone()
    }

    /// Waits until `done` holds for what was received, or panics after
    /// `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get what was expected; got {} requests, the last: {:#?}",
                received.len(),
                received
                    .iter()
                    .rev()
                    .take(3)
                    .map(|r| &r.body)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let method = request.method().to_string();
    let webhook_id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signature = header("webhook-signature");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            method,
            webhook_id: webhook_id.clone(),
            timestamp,
            signature,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        });
        if state.in_flight.contains(&webhook_id) {
            state.overlaps.push(webhook_id.clone());
        }
        state.in_flight.push(webhook_id.clone());
        state
            .script
            .pop_front()
            .or_else(|| state.otherwise.clone())
            .unwrap_or_else(|| Reply::status(200))
    };
    tokio::time::sleep(reply.delay).await;
    {
        let mut state = state.lock().unwrap();
        if let Some(i) = state.in_flight.iter().position(|id| *id == webhook_id) {
            state.in_flight.remove(i);
        }
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    let body = reply.body.map_or_else(
        || Bytes::from_static(b"{\"status\":\"received\"}"),
        Bytes::from,
    );
    Ok(response.body(Full::new(body)).unwrap())
}
