//! The signing keys of an identity provider, from its JWKS document (RFC
//! 7517): fetched at start, refreshed periodically, and on demand when a
//! token names a key id not seen yet — at most once per minimum interval,
//! one fetch shared by every caller waiting for it.
//!
//! Verifying a token never waits on a lock held across a fetch: the keys
//! are an `Arc` swapped in whole by a successful fetch, and only a token
//! naming an unknown key id waits, bounded, for a refresh.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::jwk::Jwk;
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::keys::Key;

/// Where and how often the keys are fetched.
#[derive(Clone)]
pub struct JwksConfig {
    /// The JWKS document's URL: `https`, or `http` to a loopback address or
    /// with [`allow_http`](Self::allow_http).
    pub url: String,
    /// Allow `http` to any host (an identity provider inside the cluster).
    pub allow_http: bool,
    /// PEM certificates trusted besides the system roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// How often the keys are refreshed.
    pub refresh: Duration,
    /// At most one refresh for unknown key ids per this interval.
    pub min_refresh: Duration,
    /// How long one fetch may take, and so how long a call naming a new key
    /// id waits.
    pub timeout: Duration,
    /// How long start-up keeps trying to get the first keys.
    pub startup: Duration,
}

impl fmt::Debug for JwksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksConfig")
            .field("url", &Url::parse(&self.url).map(|url| shown(&url)).ok())
            .field("allow_http", &self.allow_http)
            .field("ca", &self.ca_pem.is_some())
            .field("refresh", &self.refresh)
            .field("min_refresh", &self.min_refresh)
            .field("timeout", &self.timeout)
            .field("startup", &self.startup)
            .finish()
    }
}

impl JwksConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            allow_http: false,
            ca_pem: None,
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            startup: Duration::from_secs(15),
        }
    }
}

/// Keys by id.
pub(crate) type KeyMap = HashMap<String, Arc<Key>>;

/// The keys of one successful fetch, and each key's JWK as served (to tell
/// a changed key from the same one).
#[derive(Default)]
struct Fetched {
    keys: Arc<KeyMap>,
    served: HashMap<String, String>,
}

/// A fetch under way, shared by everyone waiting for it; `true` when it
/// brought keys.
type Fetch = Shared<BoxFuture<'static, bool>>;

#[derive(Default)]
struct FetchState {
    inflight: Option<Fetch>,
    /// When a token with an unknown key id last caused a fetch.
    last_on_demand: Option<Instant>,
}

/// The identity provider's keys.
pub(crate) struct Jwks {
    config: JwksConfig,
    url: Url,
    /// The URL as logged: no credentials, no query.
    shown: String,
    client: reqwest::Client,
    current: RwLock<Fetched>,
    /// Bumped when a key is withdrawn or replaced: tokens remembered as
    /// verified before are verified again.
    generation: AtomicU64,
    state: Mutex<FetchState>,
}

/// Largest JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Shortest interval between refreshes.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A URL as logged: without credentials or query.
fn shown(url: &Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    )
}

impl Jwks {
    /// Checks the settings and builds the HTTP client; fetches nothing.
    pub(crate) fn new(mut config: JwksConfig) -> Result<Self, String> {
        let url = Url::parse(&config.url)
            .map_err(|e| format!("BILLING_JWT_JWKS_URL is not a URL: {e}"))?;
        let shown = shown(&url);
        // No busy loop, whatever the settings.
        config.refresh = config.refresh.max(MIN_INTERVAL);
        config.min_refresh = config.min_refresh.max(MIN_INTERVAL);
        match url.scheme() {
            "https" => {}
            "http" if config.allow_http || is_loopback(&url) => {}
            "http" => {
                return Err(format!(
                    "BILLING_JWT_JWKS_URL {shown} is plain http to a host that is not loopback: \
                     use https, or set BILLING_JWT_JWKS_ALLOW_HTTP=true for an identity provider \
                     inside the cluster"
                ));
            }
            other => {
                return Err(format!(
                    "BILLING_JWT_JWKS_URL must be https (or http), not {other}"
                ));
            }
        }
        let client = client(&config, url.scheme() == "https")?;
        Ok(Self {
            url,
            shown,
            client,
            current: RwLock::default(),
            generation: AtomicU64::new(0),
            state: Mutex::default(),
            config,
        })
    }

    /// Fetches the first keys, trying for up to `startup`; `Err` when none
    /// came. Then refreshes them in the background for as long as `self`
    /// lives.
    pub(crate) async fn start(self: &Arc<Self>) -> Result<(), String> {
        let deadline = Instant::now() + self.config.startup;
        let result = loop {
            match self.refresh().await {
                Ok(keys) => break Ok(keys),
                Err(e) if Instant::now() + Duration::from_secs(1) < deadline => {
                    tracing::warn!(url = %self.shown, error = %e, "fetching the JWKS failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => break Err(e),
            }
        };
        // After a failure the next try comes sooner.
        self.spawn_refresher(if result.is_ok() {
            self.config.refresh
        } else {
            self.config.min_refresh.min(self.config.refresh)
        });
        match result {
            Ok(keys) => {
                tracing::info!(url = %self.shown, keys, "fetched the JWT signing keys");
                Ok(())
            }
            Err(e) => Err(format!(
                "no JWT signing keys from {} after {:?}: {e}",
                self.shown, self.config.startup
            )),
        }
    }

    /// The URL as logged.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key `kid`, among the keys fetched last.
    pub(crate) fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys().get(kid).cloned()
    }

    fn keys(&self) -> Arc<KeyMap> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .clone()
    }

    /// A fetch to wait for, since a token named `kid` that is not known:
    /// the one under way, or a new one unless one was started for an
    /// unknown key id less than `min_refresh` ago. `None`: nothing to wait
    /// for (the key came meanwhile, or the rate limit holds).
    pub(crate) fn on_demand(self: &Arc<Self>, kid: &str) -> Option<Fetch> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fetch) = &state.inflight
            && fetch.peek().is_none()
        {
            return Some(fetch.clone());
        }
        if self.get(kid).is_some() {
            return None;
        }
        if state
            .last_on_demand
            .is_some_and(|at| at.elapsed() < self.config.min_refresh)
        {
            return None;
        }
        state.last_on_demand = Some(Instant::now());
        self.start_fetch(&mut state)
    }

    /// Waits, at most a fetch's timeout, for the refresh a token naming the
    /// unknown `kid` may cause.
    pub(crate) async fn wait_for(self: &Arc<Self>, kid: &str) {
        if let Some(fetch) = self.on_demand(kid) {
            let bound = self.config.timeout + Duration::from_millis(500);
            let _ = tokio::time::timeout(bound, fetch).await;
        }
    }

    /// A fetch in a task of its own: it completes even when the call that
    /// asked for it is cancelled. `None` outside a runtime.
    fn start_fetch(self: &Arc<Self>, state: &mut FetchState) -> Option<Fetch> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let jwks = self.clone();
        let task = runtime.spawn(async move {
            let fetched = match jwks.refresh().await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(url = %jwks.shown, error = %e,
                        "refreshing the JWT signing keys failed; keeping the keys fetched before");
                    false
                }
            };
            // Done, whether or not anyone still waits for it.
            jwks.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .inflight = None;
            fetched
        });
        let fetch = async move { task.await.unwrap_or(false) }.boxed().shared();
        state.inflight = Some(fetch.clone());
        Some(fetch)
    }

    /// The shared fetch under way, or a new one.
    fn fetch_now(self: &Arc<Self>) -> Option<Fetch> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fetch) = &state.inflight
            && fetch.peek().is_none()
        {
            return Some(fetch.clone());
        }
        self.start_fetch(&mut state)
    }

    /// Refreshes every `refresh`, and after a failure every `min_refresh`,
    /// until the keys are dropped.
    fn spawn_refresher(self: &Arc<Self>, first: Duration) {
        let jwks = Arc::downgrade(self);
        let (every, retry) = (
            self.config.refresh,
            self.config.min_refresh.min(self.config.refresh),
        );
        tokio::spawn(async move {
            let mut wait = first;
            loop {
                tokio::time::sleep(wait).await;
                let Some(fetch) = jwks.upgrade().and_then(|jwks| jwks.fetch_now()) else {
                    return;
                };
                wait = if fetch.await { every } else { retry };
            }
        });
    }

    /// One fetch; the keys are replaced only when it brings usable ones.
    async fn refresh(&self) -> Result<usize, String> {
        let fetched = self.fetch().await?;
        let count = fetched.keys.len();
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let withdrawn = current
            .served
            .iter()
            .any(|(kid, jwk)| fetched.served.get(kid) != Some(jwk));
        *current = fetched;
        drop(current);
        if withdrawn {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(count)
    }

    async fn fetch(&self) -> Result<Fetched, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err("the document is larger than 1 MiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// The usable keys of a JWKS document; keys without a `kid`, and keys of
/// other kinds, are skipped.
fn parse(body: &[u8]) -> Result<Fetched, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document (a JSON object with keys): {e}"))?;
    let mut keys = KeyMap::new();
    let mut served = HashMap::new();
    let mut skipped = 0usize;
    for value in document.keys {
        let raw = value.to_string();
        let key = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("a malformed key: {e}"))
            .and_then(|jwk| {
                let kid = jwk.common.key_id.clone().ok_or("a key without kid")?;
                Ok((kid, Key::from_jwk(&jwk)?))
            });
        match key {
            Ok((kid, key)) => {
                keys.insert(kid.clone(), Arc::new(key));
                served.insert(kid, raw);
            }
            Err(reason) => {
                skipped += 1;
                tracing::debug!(%reason, "a JWKS key is skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "the JWKS has no usable signing key (RS256, ES256 or EdDSA with a kid; {skipped} skipped)"
        ));
    }
    Ok(Fetched {
        keys: Arc::new(keys),
        served,
    })
}

/// Whether the URL's host is a loopback address.
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// An HTTP client trusting the system roots and the configured CA.
fn client(config: &JwksConfig, https: bool) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = &config.ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("BILLING_JWT_JWKS_CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("BILLING_JWT_JWKS_CA: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("BILLING_JWT_JWKS_CA holds no PEM certificate".to_owned());
        }
    }
    if https && roots.is_empty() {
        return Err(
            "no trusted root certificates for BILLING_JWT_JWKS_URL: install the system CA \
             certificates or set BILLING_JWT_JWKS_CA"
                .to_owned(),
        );
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(https)
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // Redirects stay on https; a plain http URL is not redirected.
        .redirect(if https {
            reqwest::redirect::Policy::limited(3)
        } else {
            reqwest::redirect::Policy::none()
        })
        .user_agent(concat!("billing/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the JWKS HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback_unless_allowed() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(Jwks::new(JwksConfig::new(ok)).is_ok(), "{ok}");
        }
        let err = Jwks::new(JwksConfig::new("http://user:pw@idp.internal/jwks?token=x"))
            .err()
            .unwrap();
        assert!(err.contains("BILLING_JWT_JWKS_ALLOW_HTTP"), "{err}");
        assert!(!err.contains("pw") && !err.contains("token=x"), "{err}");
        let allowed = JwksConfig {
            allow_http: true,
            ..JwksConfig::new("http://idp.internal/jwks")
        };
        assert!(Jwks::new(allowed).is_ok());
        assert!(Jwks::new(JwksConfig::new("ftp://idp/jwks")).is_err());
        assert!(Jwks::new(JwksConfig::new("not a url")).is_err());
    }

    #[test]
    fn a_document_without_usable_keys_is_a_failed_fetch() {
        assert!(parse(br#"{"keys": []}"#).is_err());
        assert!(parse(br#"{"keys": [{"kty": "oct", "k": "AAAA", "kid": "a"}]}"#).is_err());
        assert!(parse(b"<html>").is_err());
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
            {"kty": "OKP", "crv": "Ed25519", "x": x},
            {"kty": "weird", "kid": "w"},
        ]});
        let fetched = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(fetched.keys.len(), 1);
        assert!(fetched.keys.contains_key("ed"));
    }
}
