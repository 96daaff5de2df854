//! Authentication and authorization, in one place: a tower layer in front of
//! the billing service verifies the bearer JWT, checks the per-RPC policy
//! (deny by default), and hands the handlers a [`Principal`]. Handlers that a
//! customer admin may call check ownership with [`Principal::may_access`],
//! against the account's stored customer, never a field of the request.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use billing_store::Actor;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use uuid::Uuid;

/// Who may do what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    ProjectSuperAdmin,
    /// Call control: rating, holds, charges, and reading accounts.
    Service,
    /// Reads its own customer's account, balance and ledger.
    CustomerAdmin,
}

impl Role {
    pub const ALL: [Self; 3] = [Self::ProjectSuperAdmin, Self::Service, Self::CustomerAdmin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ProjectSuperAdmin => "project_super_admin",
            Self::Service => "service",
            Self::CustomerAdmin => "customer_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    pub role: Role,
    /// Required for customer admins: the customer whose accounts they read.
    pub customer_id: Option<Uuid>,
    /// The token's `exp` (seconds since the epoch): a long-lived call (a
    /// `WatchAccount` stream) ends when its token does.
    pub expires_at: u64,
}

impl Principal {
    /// The actor recorded on the events this principal causes.
    pub fn actor(&self) -> Actor {
        Actor {
            principal: self.subject.clone(),
            role: self.role.as_str().to_owned(),
        }
    }

    /// How long the token stays valid from now, with the leeway every
    /// call gets (zero once it has expired).
    pub fn valid_for(&self) -> std::time::Duration {
        let now = jsonwebtoken::get_current_timestamp();
        std::time::Duration::from_secs(
            self.expires_at
                .saturating_add(LEEWAY_SECONDS)
                .saturating_sub(now),
        )
    }

    /// Whether this principal may read or act on an account owned by
    /// `owner` (its stored customer). Only customer admins are restricted.
    pub fn may_access(&self, owner: Uuid) -> bool {
        match self.role {
            Role::ProjectSuperAdmin | Role::Service => true,
            Role::CustomerAdmin => self.customer_id == Some(owner),
        }
    }
}

/// The RPCs each role may call; anything not listed is denied. Customer
/// admins are further limited to their own account by the handlers.
pub fn permits(role: Role, rpc: &str) -> bool {
    match role {
        Role::ProjectSuperAdmin => true,
        Role::Service => matches!(
            rpc,
            "Rate"
                | "Reserve"
                | "Extend"
                | "Commit"
                | "Release"
                | "Debit"
                | "GetBillingAccount"
                | "GetBalance"
                | "EstimateCost"
                | "ComparePlans"
                | "WatchAccount"
        ),
        Role::CustomerAdmin => matches!(
            rpc,
            "GetBillingAccount"
                | "GetBalance"
                | "ListTransactions"
                | "Rate"
                | "EstimateCost"
                | "ComparePlans"
                | "WatchAccount"
        ),
    }
}

/// The claims of our tokens.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The key tokens are verified with; it pins the one accepted algorithm.
#[derive(Clone)]
pub enum VerifyingKey {
    /// A shared secret (HS256).
    Hs256(Vec<u8>),
    /// An RSA public key in PEM (RS256).
    Rs256(Vec<u8>),
    /// An EC P-256 public key in PEM (ES256).
    Es256(Vec<u8>),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Hs256(_) => "Hs256",
            Self::Rs256(_) => "Rs256",
            Self::Es256(_) => "Es256",
        };
        write!(f, "VerifyingKey::{name}(<redacted>)")
    }
}

/// Why a token was refused. Never carries the token itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unauthenticated(&'static str);

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Tokens verified recently. Call control sends the same token on every
    /// call, and checking its signature and claims each time was a seventh
    /// of the service's CPU. A remembered token is only as good as its
    /// claims: `exp` and `nbf` are checked again on every use.
    verified: Arc<Mutex<LruCache<String, Verified>>>,
}

/// A token that passed verification, and the times that bound it.
#[derive(Clone, Debug)]
struct Verified {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
}

impl Verified {
    /// The time rules of the first verification, with its leeway.
    fn current(&self, now: u64) -> bool {
        self.exp >= now.saturating_sub(LEEWAY_SECONDS)
            && self.nbf.is_none_or(|nbf| nbf <= now + LEEWAY_SECONDS)
    }
}

/// Verified tokens remembered.
const VERIFIED_TOKENS: usize = 4_096;

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

impl Authenticator {
    pub fn new(
        key: &VerifyingKey,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        let (key, algorithm) = match key {
            VerifyingKey::Hs256(secret) if secret.len() < 16 => {
                return Err("the JWT secret must be at least 16 bytes".to_owned());
            }
            VerifyingKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            VerifyingKey::Rs256(pem) => (
                DecodingKey::from_rsa_pem(pem).map_err(|e| format!("the RSA public key: {e}"))?,
                Algorithm::RS256,
            ),
            VerifyingKey::Es256(pem) => (
                DecodingKey::from_ec_pem(pem).map_err(|e| format!("the EC public key: {e}"))?,
                Algorithm::ES256,
            ),
        };
        // Exactly one algorithm: no `none`, no switching.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
        validation.validate_aud = false;
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Ok(Self {
            key,
            validation,
            verified: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(VERIFIED_TOKENS).unwrap_or(NonZeroUsize::MIN),
            ))),
        })
    }

    /// The principal of an `authorization: Bearer <jwt>` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Unauthenticated> {
        let header = authorization.ok_or(Unauthenticated("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Unauthenticated(
                "the authorization header is not a bearer token",
            ))?;
        let token = token.trim();
        if let Some(verified) = self.remembered(token)
            && verified.current(jsonwebtoken::get_current_timestamp())
        {
            return Ok(verified.principal);
        }
        let raw = token;
        let token =
            jsonwebtoken::decode::<Claims>(raw, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                })
            })?;
        // RFC 7515 4.1.11: a token naming critical extensions the recipient
        // does not understand is invalid, and we understand none.
        if token.header.crit.is_some() {
            return Err(Unauthenticated(
                "the token names critical header parameters this service does not understand",
            ));
        }
        let claims = token.claims;
        let role = claims
            .role
            .as_deref()
            .ok_or(Unauthenticated("the token has no role"))?;
        let role = Role::parse(role).ok_or(Unauthenticated("the token's role is unknown"))?;
        let customer_id = match (role, claims.customer_id.as_deref()) {
            (Role::CustomerAdmin, None) => {
                return Err(Unauthenticated(
                    "a customer_admin token needs a customer_id",
                ));
            }
            (_, None) => None,
            (_, Some(id)) => Some(
                Uuid::parse_str(id)
                    .map_err(|_| Unauthenticated("the token's customer_id is not a UUID"))?,
            ),
        };
        if claims.sub.is_empty() {
            return Err(Unauthenticated("the token has no subject"));
        }
        // The subject is recorded on every change: it keeps the rule of a key.
        if crate::validate::Text::Key.check(&claims.sub).is_err() {
            return Err(Unauthenticated(
                "the token's subject must be at most 255 bytes without control characters",
            ));
        }
        let principal = Principal {
            subject: claims.sub,
            role,
            customer_id,
            expires_at: claims.exp,
        };
        self.cache().put(
            raw.to_owned(),
            Verified {
                principal: principal.clone(),
                exp: claims.exp,
                nbf: claims.nbf,
            },
        );
        Ok(principal)
    }

    fn remembered(&self, token: &str) -> Option<Verified> {
        self.cache().get(token).cloned()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Verified>> {
        // A panic cannot leave an entry half-written.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Mints HS256 tokens (`billing token`, tests).
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    role: &str,
    customer_id: Option<Uuid>,
    ttl_seconds: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    let claims = Claims {
        sub: subject.to_owned(),
        role: Some(role.to_owned()),
        customer_id: customer_id.map(|c| c.to_string()),
        exp: jsonwebtoken::get_current_timestamp() + ttl_seconds,
        nbf: None,
        iss: issuer.map(str::to_owned),
        aud: audience.map(str::to_owned),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// The layer that authenticates and authorizes every call of the service it
/// wraps.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// A service whose calls carry a verified, authorized [`Principal`].
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// The request's one `authorization` header, if any. Two are refused: which
/// one counts would be up to whichever proxy or server reads them.
pub fn authorization(headers: &http::HeaderMap) -> Result<Option<&str>, Unauthenticated> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Unauthenticated("more than one authorization header"));
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let rpc = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let rpc = crate::status::clip(&rpc, crate::status::MAX_METADATA_BYTES);
        let verified = authorization(request.headers())
            .and_then(|header| self.authenticator.authenticate(header));
        let status = match verified {
            Err(reason) => {
                tracing::info!(rpc, %reason, "unauthenticated call refused");
                Status::unauthenticated(reason.to_string())
            }
            Ok(principal) if !permits(principal.role, &rpc) => {
                tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
                    "call denied by role");
                crate::status::denied(&rpc, principal.role)
            }
            Ok(principal) => {
                request.extensions_mut().insert(principal.actor());
                request.extensions_mut().insert(principal);
                return Box::pin(self.inner.call(request));
            }
        };
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_keeps_its_time_bounds() {
        let verified = Verified {
            principal: Principal {
                subject: "s".into(),
                role: Role::Service,
                customer_id: None,
                expires_at: 10_000,
            },
            exp: 10_000,
            nbf: Some(5_000),
        };
        assert!(verified.current(10_000 + LEEWAY_SECONDS));
        assert!(!verified.current(10_001 + LEEWAY_SECONDS), "expired");
        assert!(verified.current(5_000 - LEEWAY_SECONDS));
        assert!(!verified.current(4_999 - LEEWAY_SECONDS), "not yet valid");
    }

    #[test]
    fn a_token_is_verified_once_and_then_remembered() {
        let auth = Authenticator::new(
            &VerifyingKey::Hs256(b"0123456789abcdef".to_vec()),
            None,
            None,
        )
        .unwrap();
        let token = mint_hs256(b"0123456789abcdef", "cc", "service", None, 60, None, None).unwrap();
        let header = format!("Bearer {token}");
        let first = auth.authenticate(Some(&header)).unwrap();
        assert!(auth.remembered(&token).is_some());
        assert_eq!(auth.authenticate(Some(&header)).unwrap(), first);
        // A forged token is never answered from the cache of a real one.
        let forged = format!("Bearer {token}x");
        assert!(auth.authenticate(Some(&forged)).is_err());
    }

    #[test]
    fn unknown_rpcs_are_denied_to_every_role_but_the_super_admin() {
        assert!(permits(Role::ProjectSuperAdmin, "SomethingNew"));
        assert!(!permits(Role::Service, "SomethingNew"));
        assert!(!permits(Role::CustomerAdmin, "SomethingNew"));
        assert!(!permits(Role::Service, "AddBalance"));
        assert!(!permits(Role::CustomerAdmin, "ListBillingAccounts"));
    }

    #[test]
    fn keys_never_print_and_short_secrets_are_refused() {
        let key = VerifyingKey::Hs256(b"super-secret-value-123".to_vec());
        assert!(!format!("{key:?}").contains("super-secret"));
        let authenticator = Authenticator::new(&key, None, None).unwrap();
        assert!(!format!("{authenticator:?}").contains("super-secret"));
        assert!(Authenticator::new(&VerifyingKey::Hs256(b"short".to_vec()), None, None).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let secret = b"0123456789abcdef0123";
        let strict = Authenticator::new(
            &VerifyingKey::Hs256(secret.to_vec()),
            Some("billing-idp"),
            Some("billing"),
        )
        .unwrap();
        let right = mint_hs256(
            secret,
            "a",
            "service",
            None,
            60,
            Some("billing-idp"),
            Some("billing"),
        )
        .unwrap();
        let wrong_iss = mint_hs256(
            secret,
            "a",
            "service",
            None,
            60,
            Some("evil"),
            Some("billing"),
        )
        .unwrap();
        let no_aud =
            mint_hs256(secret, "a", "service", None, 60, Some("billing-idp"), None).unwrap();
        assert!(
            strict
                .authenticate(Some(&format!("Bearer {right}")))
                .is_ok()
        );
        assert!(
            strict
                .authenticate(Some(&format!("Bearer {wrong_iss}")))
                .is_err()
        );
        assert!(
            strict
                .authenticate(Some(&format!("Bearer {no_aud}")))
                .is_err()
        );
    }

    fn hs256(header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn verifier() -> Authenticator {
        Authenticator::new(&VerifyingKey::Hs256(SECRET.to_vec()), None, None).unwrap()
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "sub": "alice",
            "role": "service",
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    fn verdict(token: &str) -> Result<Principal, &'static str> {
        verifier()
            .authenticate(Some(&format!("Bearer {token}")))
            .map_err(|e| e.0)
    }

    #[test]
    fn a_token_is_not_valid_before_its_nbf() {
        let header = Header::new(Algorithm::HS256);
        let now = jsonwebtoken::get_current_timestamp();
        let future = hs256(&header, &claims(serde_json::json!({ "nbf": now + 3_600 })));
        assert_eq!(
            verdict(&future).unwrap_err(),
            "the token is not valid yet (nbf)"
        );
        let within_leeway = hs256(&header, &claims(serde_json::json!({ "nbf": now + 10 })));
        assert!(verdict(&within_leeway).is_ok());
        let past = hs256(&header, &claims(serde_json::json!({ "nbf": now - 10 })));
        assert!(verdict(&past).is_ok());
    }

    #[test]
    fn a_token_with_critical_extensions_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".to_owned()]);
        header.extras.insert(
            "http://example.com/must-understand".to_owned(),
            "yes".to_owned(),
        );
        let token = hs256(&header, &claims(serde_json::json!({})));
        assert!(verdict(&token).unwrap_err().contains("critical"));
        header.crit = Some(Vec::new());
        let empty = hs256(&header, &claims(serde_json::json!({})));
        assert!(verdict(&empty).is_err(), "an empty crit is invalid too");
    }

    #[test]
    fn a_subject_follows_the_rule_of_a_key() {
        let header = Header::new(Algorithm::HS256);
        for bad in ["al\u{0}ice".to_owned(), "x".repeat(256), "a\nb".to_owned()] {
            let token = hs256(&header, &claims(serde_json::json!({ "sub": bad })));
            assert!(verdict(&token).is_err(), "{bad:?}");
        }
        let token = hs256(
            &header,
            &claims(serde_json::json!({ "sub": "x".repeat(255) })),
        );
        assert!(verdict(&token).is_ok());
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(authorization(&headers).unwrap(), None);
        headers.append(http::header::AUTHORIZATION, "Bearer a".parse().unwrap());
        assert_eq!(authorization(&headers).unwrap(), Some("Bearer a"));
        headers.append(http::header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(authorization(&headers).is_err());
    }
}
