//! Authentication and authorization, in one place: a tower layer in front of
//! the billing service verifies the bearer JWT, checks the per-RPC policy
//! (deny by default), and hands the handlers a [`Principal`]. Handlers that a
//! customer admin may call check ownership with [`Principal::may_access`],
//! against the account's stored customer, never a field of the request.
//!
//! Tokens are verified with configured keys ([`VerifyingKey`]: an HS256
//! secret, RS256, ES256 or EdDSA public keys, by key id for rotation by
//! hand) and with an identity provider's keys (`jwks`: fetched, refreshed,
//! and fetched again, rate-limited, for a key id not seen yet). Each key
//! pins its one algorithm (`keys`). A verified token is remembered, so the
//! next call with it costs a lookup; it is checked again once its time
//! bounds or its key are gone.

mod jwks;
mod keys;
mod layer;
mod policy;

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::jwks::Jwks;
pub use self::jwks::JwksConfig;
use self::keys::Key;
pub use self::keys::VerifyingKey;
pub use self::layer::{AuthLayer, Authenticated, authorization};
pub use self::policy::{Principal, Role, permits};

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

/// Why a token was refused. Never carries the token itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unauthenticated(&'static str);

/// Why checking a token did not come to a principal.
enum Refusal {
    Refused(Unauthenticated),
    /// The token names a key id the JWKS may bring with a refresh.
    UnknownKid,
}

impl From<Unauthenticated> for Refusal {
    fn from(reason: Unauthenticated) -> Self {
        Self::Refused(reason)
    }
}

impl Refusal {
    fn reason(self) -> Unauthenticated {
        match self {
            Self::Refused(reason) => reason,
            Self::UnknownKid => UNKNOWN_KID,
        }
    }
}

const UNKNOWN_KID: Unauthenticated =
    Unauthenticated("the token's key id (kid) names no key this service knows");

/// The keys tokens are verified with: configured ones, and an identity
/// provider's JWKS.
///
/// - A token naming a key id (`kid`) is verified with that key only: a
///   configured one, else one of the JWKS (refreshed, bounded, when the id
///   is new). With only the single unnamed key configured (the
///   `BILLING_JWT_SECRET` or `BILLING_JWT_PUBLIC_KEY` of old) the id is
///   ignored, as it always was.
/// - A token naming none is verified with the unnamed key, or with the
///   only configured key when there is exactly one.
struct Keys {
    unnamed: Option<Arc<Key>>,
    named: jwks::KeyMap,
    jwks: Option<Arc<Jwks>>,
}

impl Keys {
    fn find(&self, kid: Option<&str>) -> Result<Arc<Key>, Refusal> {
        let Some(kid) = kid else {
            return match (&self.unnamed, self.named.len()) {
                (Some(key), _) => Ok(key.clone()),
                (None, 1) => self
                    .named
                    .values()
                    .next()
                    .cloned()
                    .ok_or(Refusal::Refused(UNKNOWN_KID)),
                _ => Err(Unauthenticated(
                    "the token names no key id (kid), and this service has no single key for such tokens",
                )
                .into()),
            };
        };
        if let Some(key) = self.named.get(kid) {
            return Ok(key.clone());
        }
        match (&self.jwks, &self.unnamed) {
            (Some(jwks), _) => jwks.get(kid).ok_or(Refusal::UnknownKid),
            (None, Some(key)) if self.named.is_empty() => Ok(key.clone()),
            (None, _) => Err(UNKNOWN_KID.into()),
        }
    }

    /// Changes when keys are withdrawn or replaced.
    fn generation(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |jwks| jwks.generation())
    }
}

/// The claim rules, one per accepted algorithm: each accepts that one
/// algorithm only (never `none`, never a switch).
struct Validations(Vec<(Algorithm, Validation)>);

impl Validations {
    fn new(issuer: Option<&str>, audience: Option<&str>) -> Self {
        let rules = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ]
        .into_iter()
        .map(|algorithm| {
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
            (algorithm, validation)
        })
        .collect();
        Self(rules)
    }

    fn of(&self, algorithm: Algorithm) -> Option<&Validation> {
        self.0
            .iter()
            .find_map(|(a, v)| (*a == algorithm).then_some(v))
    }
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Keys>,
    validations: Arc<Validations>,
    /// Tokens verified recently. Call control sends the same token on every
    /// call, and checking its signature and claims each time was a seventh
    /// of the service's CPU. A remembered token is only as good as its
    /// claims: `exp` and `nbf` are checked again on every use, and it is
    /// verified again once a key of the JWKS is withdrawn or replaced.
    verified: Arc<Mutex<LruCache<String, Remembered>>>,
}

/// A token that passed verification, and the times that bound it.
#[derive(Clone, Debug)]
struct Verified {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
}

/// A verified token, and the key generation it was verified under.
struct Remembered {
    verified: Verified,
    generation: u64,
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
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for key in self.keys.unnamed.iter().chain(self.keys.named.values()) {
            if !algorithms.contains(&key.algorithm) {
                algorithms.push(key.algorithm);
            }
        }
        f.debug_struct("Authenticator")
            .field("algorithms", &algorithms)
            .field("key_ids", &self.keys.named.keys().collect::<Vec<_>>())
            .field("jwks", &self.keys.jwks.as_ref().map(|jwks| jwks.shown()))
            .finish_non_exhaustive()
    }
}

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// The keys an [`Authenticator`] verifies with, gathered before it starts.
#[derive(Debug, Default)]
pub struct AuthenticatorBuilder {
    issuer: Option<String>,
    audience: Option<String>,
    unnamed: Option<VerifyingKey>,
    named: Vec<(String, VerifyingKey)>,
    jwks: Option<JwksConfig>,
}

impl AuthenticatorBuilder {
    /// The key of tokens that name no key id (`kid`).
    pub fn key(mut self, key: VerifyingKey) -> Self {
        self.unnamed = Some(key);
        self
    }

    /// A key for tokens whose header names `kid`.
    pub fn named_key(mut self, kid: impl Into<String>, key: VerifyingKey) -> Self {
        self.named.push((kid.into(), key));
        self
    }

    /// The keys of an identity provider's JWKS document.
    pub fn jwks(mut self, config: JwksConfig) -> Self {
        self.jwks = Some(config);
        self
    }

    /// Whether no key at all is configured.
    pub fn is_empty(&self) -> bool {
        self.unnamed.is_none() && self.named.is_empty() && self.jwks.is_none()
    }

    /// An authenticator of configured keys only (no JWKS: see
    /// [`start`](Self::start)).
    pub fn build(self) -> Result<Authenticator, String> {
        if self.jwks.is_some() {
            return Err("an authenticator with a JWKS is started, not built".to_owned());
        }
        self.assemble(None)
    }

    /// An authenticator, with the first keys of its JWKS when it has one.
    /// Start-up fails when no key at all can be had: no configured key and
    /// the JWKS unreachable (or empty) for `startup`. With configured keys
    /// it starts anyway and keeps fetching in the background.
    pub async fn start(mut self) -> Result<Authenticator, String> {
        let Some(config) = self.jwks.take() else {
            return self.assemble(None);
        };
        let jwks = Arc::new(Jwks::new(config)?);
        // Configured keys are checked before anything is fetched.
        let statics = self.assemble(Some(jwks.clone()))?;
        if let Err(e) = jwks.start().await {
            if statics.keys.unnamed.is_none() && statics.keys.named.is_empty() {
                return Err(e);
            }
            tracing::warn!(error = %e, "starting with the configured JWT keys only; the JWKS is fetched again in the background");
        }
        Ok(statics)
    }

    fn assemble(self, jwks: Option<Arc<Jwks>>) -> Result<Authenticator, String> {
        if self.unnamed.is_none() && self.named.is_empty() && jwks.is_none() {
            return Err("no key to verify tokens with".to_owned());
        }
        let unnamed = self
            .unnamed
            .as_ref()
            .map(Key::new)
            .transpose()?
            .map(Arc::new);
        let mut named = jwks::KeyMap::new();
        for (kid, key) in &self.named {
            if kid.is_empty() {
                return Err("a key id (kid) must not be empty".to_owned());
            }
            let key = Key::new(key).map_err(|e| format!("key {kid}: {e}"))?;
            if named.insert(kid.clone(), Arc::new(key)).is_some() {
                return Err(format!("key id {kid} is configured twice"));
            }
        }
        Ok(Authenticator {
            keys: Arc::new(Keys {
                unnamed,
                named,
                jwks,
            }),
            validations: Arc::new(Validations::new(
                self.issuer.as_deref(),
                self.audience.as_deref(),
            )),
            verified: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(VERIFIED_TOKENS).unwrap_or(NonZeroUsize::MIN),
            ))),
        })
    }
}

impl Authenticator {
    /// An authenticator of one key, for tokens with or without a `kid`.
    pub fn new(
        key: &VerifyingKey,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        Self::builder(issuer, audience).key(key.clone()).build()
    }

    /// An authenticator of several keys, or of a JWKS.
    pub fn builder(issuer: Option<&str>, audience: Option<&str>) -> AuthenticatorBuilder {
        AuthenticatorBuilder {
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..AuthenticatorBuilder::default()
        }
    }

    /// The principal of an `authorization: Bearer <jwt>` header value,
    /// without waiting: a token naming a key id not fetched yet is refused
    /// (and the keys are refreshed for the next one). See
    /// [`verify`](Self::verify).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Unauthenticated> {
        let token = bearer(authorization)?;
        self.check(token).map_err(|refusal| {
            if let (Refusal::UnknownKid, Some(jwks)) = (&refusal, &self.keys.jwks)
                && let Ok(Some(kid)) = jsonwebtoken::decode_header(token).map(|h| h.kid)
            {
                drop(jwks.on_demand(&kid));
            }
            refusal.reason()
        })
    }

    /// The principal of an `authorization: Bearer <jwt>` header value; a
    /// token naming a key id not fetched yet waits, at most a fetch's
    /// timeout, for the identity provider's keys to be refreshed.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Principal, Unauthenticated> {
        let token = bearer(authorization)?;
        match self.check(token) {
            Err(Refusal::UnknownKid) => {
                self.refresh_for(token).await;
                self.check(token).map_err(Refusal::reason)
            }
            verdict => verdict.map_err(Refusal::reason),
        }
    }

    /// Waits for the refresh a token naming an unknown key id may cause.
    async fn refresh_for(&self, token: &str) {
        if let Some(jwks) = &self.keys.jwks
            && let Ok(Some(kid)) = jsonwebtoken::decode_header(token).map(|h| h.kid)
        {
            jwks.wait_for(&kid).await;
        }
    }

    /// A remembered token, or one verified now with the key it names.
    fn check(&self, token: &str) -> Result<Principal, Refusal> {
        // Before the keys are read: a key withdrawn meanwhile leaves this
        // verification remembered under an old generation.
        let generation = self.keys.generation();
        if let Some(verified) = self.remembered_at(token, generation)
            && verified.current(jsonwebtoken::get_current_timestamp())
        {
            return Ok(verified.principal);
        }
        let raw = token;
        let header = jsonwebtoken::decode_header(raw)
            .map_err(|_| Unauthenticated("the token is malformed"))?;
        let key = self.keys.find(header.kid.as_deref())?;
        // The key decides the algorithm, never the token.
        let validation = self
            .validations
            .of(key.algorithm)
            .filter(|_| header.alg == key.algorithm)
            .ok_or(Unauthenticated("the token's algorithm is not accepted"))?;
        let token =
            jsonwebtoken::decode::<Claims>(raw, &key.decoding, validation).map_err(|e| {
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
            )
            .into());
        }
        let claims = token.claims;
        let role = claims
            .role
            .as_deref()
            .ok_or(Unauthenticated("the token has no role"))?;
        let role = Role::parse(role).ok_or(Unauthenticated("the token's role is unknown"))?;
        let customer_id = match (role, claims.customer_id.as_deref()) {
            (Role::CustomerAdmin, None) => {
                return Err(Unauthenticated("a customer_admin token needs a customer_id").into());
            }
            (_, None) => None,
            (_, Some(id)) => Some(
                Uuid::parse_str(id)
                    .map_err(|_| Unauthenticated("the token's customer_id is not a UUID"))?,
            ),
        };
        if claims.sub.is_empty() {
            return Err(Unauthenticated("the token has no subject").into());
        }
        // The subject is recorded on every change: it keeps the rule of a key.
        if crate::validate::Text::Key.check(&claims.sub).is_err() {
            return Err(Unauthenticated(
                "the token's subject must be at most 255 bytes without control characters",
            )
            .into());
        }
        let principal = Principal {
            subject: claims.sub,
            role,
            customer_id,
            expires_at: claims.exp,
        };
        self.cache().put(
            raw.to_owned(),
            Remembered {
                verified: Verified {
                    principal: principal.clone(),
                    exp: claims.exp,
                    nbf: claims.nbf,
                },
                generation,
            },
        );
        Ok(principal)
    }

    #[cfg(test)]
    fn remembered(&self, token: &str) -> Option<Verified> {
        self.remembered_at(token, self.keys.generation())
    }

    fn remembered_at(&self, token: &str, generation: u64) -> Option<Verified> {
        self.cache()
            .get(token)
            .filter(|entry| entry.generation == generation)
            .map(|entry| entry.verified.clone())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Remembered>> {
        // A panic cannot leave an entry half-written.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a token naming an unknown key id may be worth waiting for.
    fn has_jwks(&self) -> bool {
        self.keys.jwks.is_some()
    }
}

/// The token of an `authorization: Bearer <jwt>` header value.
fn bearer(authorization: Option<&str>) -> Result<&str, Unauthenticated> {
    let header = authorization.ok_or(Unauthenticated("missing bearer token"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(Unauthenticated(
            "the authorization header is not a bearer token",
        ))?;
    Ok(token.trim())
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
    mint_hs256_with_kid(
        secret,
        None,
        subject,
        role,
        customer_id,
        ttl_seconds,
        issuer,
        audience,
    )
}

/// As [`mint_hs256`], naming the key id `kid` in the header when given
/// (for keys by id, `BILLING_JWT_SECRETS`).
#[allow(clippy::too_many_arguments)]
pub fn mint_hs256_with_kid(
    secret: &[u8],
    kid: Option<&str>,
    subject: &str,
    role: &str,
    customer_id: Option<Uuid>,
    ttl_seconds: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let claims = Claims {
        sub: subject.to_owned(),
        role: Some(role.to_owned()),
        customer_id: customer_id.map(|c| c.to_string()),
        exp: jsonwebtoken::get_current_timestamp() + ttl_seconds,
        nbf: None,
        iss: issuer.map(str::to_owned),
        aud: audience.map(str::to_owned),
    };
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| e.to_string())
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
