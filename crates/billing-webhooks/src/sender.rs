//! One attempt: the HTTP request to a customer's endpoint, made safe to
//! point at anything. `https` only (unless `allow_http`); no redirects
//! followed; no proxy from the environment; a timeout on the whole
//! exchange; at most 4 KiB of the answer read and its first 256 bytes
//! kept. Names resolve through [`GuardedResolver`], which drops every
//! address [`crate::address::refused`] names before the connection is made,
//! so the check is on the address actually connected to (a name that
//! resolves to a public address once and a private one next time gains
//! nothing); an address written in the URL is checked before sending.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::address;

/// The most of an answer read.
pub const READ_LIMIT: usize = 4 * 1024;
/// The most of an answer kept (in the delivery's `last_error`).
pub const KEEP_LIMIT: usize = 256;

/// How sending may reach out.
#[derive(Clone, Debug)]
pub struct SendPolicy {
    /// Plain `http://` endpoints (local development).
    pub allow_http: bool,
    /// Loopback, private, link-local ... addresses (local development).
    pub allow_private: bool,
    /// The whole exchange, connecting included.
    pub timeout: Duration,
}

/// What an endpoint answered, or why there was no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status, with the `Retry-After` header and the start of the
    /// body.
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// No answer: refused by policy, a connection error or a timeout.
    Error(String),
}

/// The HTTP client of every attempt (connections are pooled per endpoint).
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
    policy: SendPolicy,
}

impl Sender {
    pub fn new(policy: SendPolicy) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(!policy.allow_http)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: policy.allow_private,
            }))
            .user_agent(concat!("billing-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the webhook HTTP client: {e}"))?;
        Ok(Self { client, policy })
    }

    /// Sends `body` to `uri` with `headers`, and reads the answer.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Answer {
        let url = match reqwest::Url::parse(uri) {
            Ok(url) => url,
            Err(_) => return Answer::Error("the uri is not a URL".to_owned()),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.policy.allow_http => {}
            "http" => {
                return Answer::Error(
                    "plain http is not allowed (BILLING_WEBHOOK_ALLOW_HTTP)".to_owned(),
                );
            }
            _ => return Answer::Error("the uri is not http(s)".to_owned()),
        }
        // An address in the URL is connected to without resolving.
        if let Some(ip) = literal_ip(&url)
            && !self.policy.allow_private
            && let Some(why) = address::refused(ip)
        {
            return Answer::Error(format!(
                "the address {ip} is {why}: refused (BILLING_WEBHOOK_ALLOW_PRIVATE)"
            ));
        }
        let method = if method == "PUT" {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let mut request = self
            .client
            .request(method, url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => return Answer::Error(describe(&error)),
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut kept = Vec::new();
        let mut read = 0;
        while read < READ_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = KEEP_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                // The status is what counts: a body cut short is no failure.
                Ok(None) | Err(_) => break,
            }
        }
        Answer::Status {
            code,
            retry_after,
            body: String::from_utf8_lossy(&kept).into_owned(),
        }
    }
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// A transport error, briefly, without the URL (which may carry a
/// customer's credentials in its query).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "redirected"
    } else if error.is_body() || error.is_request() {
        "the request failed"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

/// Resolves names with the system's resolver and keeps only the addresses
/// a webhook may be sent to.
#[derive(Debug)]
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || address::refused(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| {
                        address::refused(a.ip()).map(|why| format!("{} is {why}", a.ip()))
                    })
                    .unwrap_or_else(|| "no address".to_owned());
                return Err(format!(
                    "{host} resolves only to refused addresses ({why}; BILLING_WEBHOOK_ALLOW_PRIVATE)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
