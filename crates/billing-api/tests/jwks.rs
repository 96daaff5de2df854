//! Signing keys that rotate: an identity provider's JWKS served by a
//! hand-rolled HTTP/1.1 responder on 127.0.0.1 that counts its requests and
//! can switch key sets or fail; and several configured keys by `kid`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use billing_api::auth::{AuthLayer, Authenticator, JwksConfig, Principal, VerifyingKey};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tonic::body::Body;
use tower::{Layer as _, Service as _};

/// A test-only RSA key (2048 bits), made for these tests and used nowhere else.
const RSA_PRIVATE_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEApHoJOVK4CGA0rHpbdnif09f5+CqErWmdbuHbdfuUkhCX6gok
GAux0Ho+evtTunL+RkaWhNAsGD/r4nYVvRT3Jd0ao1L3g6t+KZkIhmN6CYyS7K8X
gfFahUc5fcqjH7KjJNbnDtL3QizDVE/8syfmuo/mhQECF67jndqgDpb4geRSXm8Y
euk8HY7Up6vGbraBZwtjnd/NwmZEDigKiScK9sso6WTlhl1ys/j+oHFqk9PqqN3z
2lSXzDekoe+HuZl50WajninjEQSuAuOrjeo/B8hesYeEmDeq2KjVtKsJm8gQ1o3M
9ZXklWXJrDOp1Dlt+iqQBfAFQtOtbBJmVCQh1wIDAQABAoIBAAseLK1xR/tY9XaL
Ns+FS9h4Cu+ZgCpwrzGllr4c6WgOMxag5NuzPqvG9548iuZZi5KYhugnYjOpbnp6
XPHRDvvCPGC55P1DhF2veIINC1zF4dCZ7U7dT68ep2Y3YltsKdb9p9S6sfgJKpLy
bTR3CAOoYn6vGMMdEUnEU3lo/xdYideBelQQuT4Q1S9af8Zf5EBYIo7+Ja13yZ4B
9rlI8a8iYdiFY9JdwBopV+2DPnA/I1OnU4UQq88tz9oIEg5e/rVamRtbi3Ws6p2R
Dpl9D21N0/0HbEHw0sJxXvk+JNDzawcMxuXG37u5zDltnVLhwapQ29E5dk/X3B/M
lvOsh2ECgYEA4Bc549LQzfP3QfFXzAvQjqpFWVK89t+Tnic+bCyT9qzNaWU6DB1j
FJXsiS/2PlAA6fdBtX84g45TXIX9gAF22qSiPU+I7JW5EgaZ6JBOFJ2NNy3qFJrD
1ukxiDDFpxIxi+zEjLJ1UjcWadhe5ikeAmI6Kru7EJyVOL1Dr/0xLdkCgYEAu+Wz
ihfpblkW3XqX/KW4YA7s7+CI2ptP/CIci5DzEQxitF5rFukPfayzddoqRdYq3WXB
RooFuPIYk++RopCpyGpLIlnq4k0LGe9c0nI+1993wcIPUhe9wXxYXLxZEpyHYUn0
03k61fIK9NljV1hoekR2kj51tG3y3wg4xGy1Dy8CgYABeGWK1yFDmKwwpJK85f7y
UK+vzFktDX58dSl1sD0wSyX14RImbjLuOaWZqNTmx8OZxWOK+1C1nENzwfVN17Sd
7qKZ4GG3m6vhMGXmHrxEalw41nZIuFM8n78Rc7B4TihBEMahXbJjXbUp8J9+xxpJ
Tbev/BdYHo7kFmnRR8oA0QKBgQChpkZF4biDpMWVGWk0hGYQzgZtgKB8Ye34Hmis
cbGL0zn/rtM2zJ71IeTq2RxRJKWP/4C97PRrXmxiqVKDpy1KLJgjH3SB6IJKd7FF
o+AI3EotOYTwvVgU46MpdSi0aFHYE0Y7wSoq8acXawaaGIcZ2VihDHc7GPQ/iNU9
t8A1JQKBgGTv1b2LDYUZmNIzroTa04yTQOWqKgH++XK0uUGP4PcoXwPkcCxgpr4V
UJoyYklgO5gdxV835chMC4F4rA3DtX50uRwlPiFX1gIhfbkxPpZdZ6iOg3mr7lY4
zEnFhOA86Gj4o5FxHOLNZK/b3QV+c1eHn+INDpDw6GAw4OKDkcqY
-----END RSA PRIVATE KEY-----
";
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApHoJOVK4CGA0rHpbdnif
09f5+CqErWmdbuHbdfuUkhCX6gokGAux0Ho+evtTunL+RkaWhNAsGD/r4nYVvRT3
Jd0ao1L3g6t+KZkIhmN6CYyS7K8XgfFahUc5fcqjH7KjJNbnDtL3QizDVE/8syfm
uo/mhQECF67jndqgDpb4geRSXm8Yeuk8HY7Up6vGbraBZwtjnd/NwmZEDigKiScK
9sso6WTlhl1ys/j+oHFqk9PqqN3z2lSXzDekoe+HuZl50WajninjEQSuAuOrjeo/
B8hesYeEmDeq2KjVtKsJm8gQ1o3M9ZXklWXJrDOp1Dlt+iqQBfAFQtOtbBJmVCQh
1wIDAQAB
-----END PUBLIC KEY-----
";

/// An identity provider serving one JWKS document at any path.
struct Idp {
    url: String,
    state: Arc<IdpState>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct IdpState {
    document: Mutex<String>,
    failing: AtomicBool,
    requests: AtomicUsize,
    /// Milliseconds before each answer.
    delay_ms: AtomicUsize,
}

impl Idp {
    async fn start(keys: &[&Signer]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let state = Arc::new(IdpState::default());
        let idp = Self {
            url,
            server: tokio::spawn(serve(listener, state.clone())),
            state,
        };
        idp.serve(keys);
        idp
    }

    /// Serves these keys from now on.
    fn serve(&self, keys: &[&Signer]) {
        let keys: Vec<_> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.state.document.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    }

    /// Answers 500 from now on (or again the document).
    fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn config(&self) -> JwksConfig {
        JwksConfig {
            timeout: Duration::from_secs(2),
            startup: Duration::from_secs(2),
            ..JwksConfig::new(&self.url)
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<IdpState>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            state.requests.fetch_add(1, Ordering::SeqCst);
            let delay = state.delay_ms.load(Ordering::SeqCst) as u64;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let (status, body) = if state.failing.load(Ordering::SeqCst) {
                ("500 Internal Server Error", "down".to_owned())
            } else {
                ("200 OK", state.document.lock().unwrap().clone())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A signing key of the identity provider, and its public JWK.
struct Signer {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
    jwk: serde_json::Value,
}

impl Signer {
    fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            pair.public_key_pem(),
        )
    }

    fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self::new(
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            pair.public_key_pem(),
        )
    }

    fn rs256(kid: &str) -> Self {
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(),
            RSA_PUBLIC_PEM.to_owned(),
        )
    }

    fn new(kid: &str, algorithm: Algorithm, encoding: EncodingKey, public_pem: String) -> Self {
        let decoding = match algorithm {
            Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(public_pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .unwrap();
        let mut jwk =
            serde_json::to_value(Jwk::from_decoding_key(&decoding, None).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Self {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            public_pem,
            jwk,
        }
    }

    /// A fresh token (never remembered from before) naming this key.
    fn token(&self) -> String {
        self.token_as(Some(&self.kid), self.algorithm)
    }

    fn token_as(&self, kid: Option<&str>, algorithm: Algorithm) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims(), &self.encoding).unwrap()
    }

    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_pem(self.public_pem.as_bytes()).unwrap()
    }
}

static SUBJECTS: AtomicUsize = AtomicUsize::new(0);

/// Claims of a service token with a subject of its own.
fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": format!("svc-{}", SUBJECTS.fetch_add(1, Ordering::Relaxed)),
        "role": "service",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn verify(auth: &Authenticator, token: &str) -> Result<Principal, String> {
    auth.verify(Some(&bearer(token)))
        .await
        .map_err(|e| e.to_string())
}

async fn jwks_authenticator(config: JwksConfig) -> Authenticator {
    Authenticator::builder(None, None)
        .jwks(config)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_signed_with_served_keys_verify_for_every_algorithm() {
    let (ec, ed, rsa) = (
        Signer::es256("ec-1"),
        Signer::ed25519("ed-1"),
        Signer::rs256("rsa-1"),
    );
    let idp = Idp::start(&[&ec, &ed, &rsa]).await;
    let auth = jwks_authenticator(idp.config()).await;
    for signer in [&ec, &ed, &rsa] {
        let principal = verify(&auth, &signer.token()).await;
        assert_eq!(
            principal.unwrap().role.as_str(),
            "service",
            "{}",
            signer.kid
        );
        // The same without waiting: the key is known.
        assert!(auth.authenticate(Some(&bearer(&signer.token()))).is_ok());
    }
    assert_eq!(idp.requests(), 1, "known keys are not fetched again");
    let shown = format!("{auth:?}");
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn after_a_rotation_the_first_token_with_the_new_kid_is_accepted() {
    let (old, new) = (Signer::es256("2026-01"), Signer::ed25519("2026-02"));
    let idp = Idp::start(&[&old]).await;
    let auth = jwks_authenticator(idp.config()).await;
    let remembered = old.token();
    verify(&auth, &remembered).await.unwrap();
    // The provider publishes the new key and withdraws the old one.
    idp.serve(&[&new]);
    let principal = verify(&auth, &new.token()).await;
    assert!(principal.is_ok(), "{principal:?}");
    assert_eq!(idp.requests(), 2, "one refresh for the new kid");
    assert!(verify(&auth, &new.token()).await.is_ok());
    assert_eq!(idp.requests(), 2);
    // A token of the withdrawn key is refused, even one verified before.
    let refused = verify(&auth, &remembered).await.unwrap_err();
    assert!(refused.contains("kid"), "{refused}");
}

#[tokio::test]
async fn a_flood_of_forged_kids_fetches_at_most_once_per_interval() {
    let real = Signer::es256("real");
    let forger = Signer::es256("unused");
    let idp = Idp::start(&[&real]).await;
    let auth = jwks_authenticator(JwksConfig {
        min_refresh: Duration::from_millis(1_500),
        ..idp.config()
    })
    .await;
    assert_eq!(idp.requests(), 1);
    idp.delay(Duration::from_millis(200));
    let flood = |n: usize| {
        let auth = auth.clone();
        let forged = forger.token_as(Some(&format!("forged-{n}")), Algorithm::ES256);
        tokio::spawn(async move { verify(&auth, &forged).await })
    };
    let calls: Vec<_> = (0..64).map(flood).collect();
    for call in calls {
        let refused = call.await.unwrap().unwrap_err();
        assert!(refused.contains("kid"), "{refused}");
    }
    assert_eq!(idp.requests(), 2, "concurrent unknown kids share one fetch");
    for n in 64..128 {
        assert!(flood(n).await.unwrap().is_err());
    }
    assert_eq!(idp.requests(), 2, "the rate limit holds");
    // The real key keeps working meanwhile, without fetching.
    assert!(verify(&auth, &real.token()).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(flood(200).await.unwrap().is_err());
    assert_eq!(idp.requests(), 3, "one more fetch per interval");
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_identity_provider_is_down() {
    let key = Signer::ed25519("k1");
    let mut idp = Idp::start(&[&key]).await;
    let auth = jwks_authenticator(JwksConfig {
        refresh: Duration::from_millis(200),
        min_refresh: Duration::from_millis(200),
        ..idp.config()
    })
    .await;
    idp.fail(true);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        idp.requests() >= 2,
        "refreshes were tried: {}",
        idp.requests()
    );
    assert!(verify(&auth, &key.token()).await.is_ok());
    // An unknown kid is refused, clearly, not as an internal error.
    let other = Signer::ed25519("k2");
    let refused = verify(&auth, &other.token()).await.unwrap_err();
    assert!(refused.contains("kid"), "{refused}");
    // The listener gone altogether.
    idp.server.abort();
    let _ = (&mut idp.server).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(verify(&auth, &key.token()).await.is_ok());
}

#[tokio::test]
async fn the_algorithm_is_the_keys_never_the_tokens() {
    let ec = Signer::es256("ec");
    let idp = Idp::start(&[&ec]).await;
    let auth = jwks_authenticator(idp.config()).await;
    // HS256 with the public key as the secret: the classic confusion.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("ec".to_owned()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(),
        &EncodingKey::from_secret(ec.public_pem.as_bytes()),
    )
    .unwrap();
    let refused = verify(&auth, &confused).await.unwrap_err();
    assert!(refused.contains("algorithm"), "{refused}");
    // Another signature algorithm naming the key.
    let ed = Signer::ed25519("ec");
    let refused = verify(&auth, &ed.token()).await.unwrap_err();
    assert!(refused.contains("algorithm"), "{refused}");
    // alg none, with and without a signature.
    let claims = base64url(claims().to_string().as_bytes());
    for header in [
        r#"{"alg":"none","kid":"ec"}"#,
        r#"{"alg":"none"}"#,
        r#"{"alg":"None","kid":"ec"}"#,
    ] {
        let unsigned = format!("{}.{claims}.", base64url(header.as_bytes()));
        assert!(verify(&auth, &unsigned).await.is_err(), "{header}");
        let signed = format!("{}.{claims}.c2ln", base64url(header.as_bytes()));
        assert!(verify(&auth, &signed).await.is_err(), "{header}");
    }
}

#[tokio::test]
async fn plain_http_to_another_host_is_refused_at_configuration() {
    let err = Authenticator::builder(None, None)
        .jwks(JwksConfig::new("http://idp.example.com/jwks"))
        .start()
        .await
        .unwrap_err();
    assert!(err.contains("BILLING_JWT_JWKS_ALLOW_HTTP"), "{err}");
    let allowed = JwksConfig {
        allow_http: true,
        timeout: Duration::from_millis(200),
        startup: Duration::from_millis(300),
        ..JwksConfig::new("http://127.0.0.1:9/jwks")
    };
    let err = Authenticator::builder(None, None)
        .jwks(allowed)
        .start()
        .await
        .unwrap_err();
    assert!(!err.contains("ALLOW_HTTP"), "{err}");
}

#[tokio::test]
async fn start_up_needs_some_key() {
    let key = Signer::es256("k");
    let idp = Idp::start(&[&key]).await;
    idp.fail(true);
    let config = JwksConfig {
        startup: Duration::from_millis(500),
        ..idp.config()
    };
    let err = Authenticator::builder(None, None)
        .jwks(config.clone())
        .start()
        .await
        .unwrap_err();
    assert!(
        err.contains("no JWT signing keys") && err.contains("500"),
        "{err}"
    );
    // With a configured key it starts, and takes the JWKS keys once they come.
    let fixed = Signer::ed25519("fixed");
    let auth = Authenticator::builder(None, None)
        .named_key("fixed", fixed.verifying_key())
        .jwks(JwksConfig {
            // After a failed start the next try comes after min_refresh.
            refresh: Duration::from_secs(60),
            min_refresh: Duration::from_millis(200),
            ..config
        })
        .start()
        .await
        .unwrap();
    assert!(verify(&auth, &fixed.token()).await.is_ok());
    assert!(verify(&auth, &key.token()).await.is_err());
    idp.fail(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(verify(&auth, &key.token()).await.is_ok());
    assert!(verify(&auth, &fixed.token()).await.is_ok());
}

#[tokio::test]
async fn several_static_keys_each_verify_their_own_tokens() {
    let (a, b, c) = (Signer::es256("a"), Signer::ed25519("b"), Signer::rs256("c"));
    let secret = b"0123456789abcdef-hs";
    let auth = Authenticator::builder(None, None)
        .named_key("a", a.verifying_key())
        .named_key("b", b.verifying_key())
        .named_key("c", c.verifying_key())
        .named_key("h", VerifyingKey::Hs256(secret.to_vec()))
        .build()
        .unwrap();
    for signer in [&a, &b, &c] {
        assert!(
            verify(&auth, &signer.token()).await.is_ok(),
            "{}",
            signer.kid
        );
    }
    let hs = Signer::new_hs256(secret);
    assert!(
        verify(&auth, &hs.token_as(Some("h"), Algorithm::HS256))
            .await
            .is_ok()
    );
    // Naming A, signed by another key of A's algorithm, or by B.
    let impostor = Signer::es256("a");
    let refused = verify(&auth, &impostor.token()).await.unwrap_err();
    assert!(refused.contains("signature"), "{refused}");
    let refused = verify(&auth, &b.token_as(Some("a"), Algorithm::EdDSA))
        .await
        .unwrap_err();
    assert!(refused.contains("algorithm"), "{refused}");
    // The secret never verifies tokens naming a public key, nor the reverse.
    assert!(
        verify(&auth, &hs.token_as(Some("a"), Algorithm::HS256))
            .await
            .is_err()
    );
    assert!(
        verify(&auth, &a.token_as(Some("h"), Algorithm::ES256))
            .await
            .is_err()
    );
    // No kid, several keys: refused; an unknown kid: refused, without a JWKS
    // nothing is fetched.
    let refused = verify(&auth, &a.token_as(None, Algorithm::ES256))
        .await
        .unwrap_err();
    assert!(refused.contains("kid"), "{refused}");
    let refused = verify(&auth, &a.token_as(Some("zz"), Algorithm::ES256))
        .await
        .unwrap_err();
    assert!(refused.contains("kid"), "{refused}");
}

#[tokio::test]
async fn a_token_without_kid_uses_the_one_key() {
    let only = Signer::es256("only");
    let auth = Authenticator::builder(None, None)
        .named_key("only", only.verifying_key())
        .build()
        .unwrap();
    assert!(
        verify(&auth, &only.token_as(None, Algorithm::ES256))
            .await
            .is_ok()
    );
    // The single unnamed key of old: kid or not, as before.
    let legacy = Authenticator::new(&only.verifying_key(), None, None).unwrap();
    assert!(
        verify(&legacy, &only.token_as(None, Algorithm::ES256))
            .await
            .is_ok()
    );
    assert!(
        verify(&legacy, &only.token_as(Some("any"), Algorithm::ES256))
            .await
            .is_ok()
    );
    // The unnamed key beside named ones and a JWKS: for kid-less tokens.
    let rotated = Signer::ed25519("idp-1");
    let idp = Idp::start(&[&rotated]).await;
    let secret = b"0123456789abcdef-hs";
    let both = Authenticator::builder(None, None)
        .key(VerifyingKey::Hs256(secret.to_vec()))
        .named_key("only", only.verifying_key())
        .jwks(idp.config())
        .start()
        .await
        .unwrap();
    let dev =
        billing_api::auth::mint_hs256(secret, "dev", "service", None, 60, None, None).unwrap();
    assert!(verify(&both, &dev).await.is_ok());
    assert!(verify(&both, &only.token()).await.is_ok());
    assert!(verify(&both, &rotated.token()).await.is_ok());
}

/// The layer: a call with a new kid waits for the refresh, then reaches
/// the service; a forged one is answered UNAUTHENTICATED.
#[tokio::test]
async fn the_layer_waits_for_a_new_key_and_refuses_forged_ones() {
    let (old, new) = (Signer::rs256("r1"), Signer::es256("e2"));
    let idp = Idp::start(&[&old]).await;
    let auth = jwks_authenticator(idp.config()).await;
    let mut service = AuthLayer::new(auth).layer(Reached);
    let call = |token: String| {
        http::Request::builder()
            .uri("/billing.v1.BillingService/GetBalance")
            .header("authorization", bearer(&token))
            .body(Body::default())
            .unwrap()
    };
    let grpc_status = |response: &http::Response<Body>| {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let response = service.call(call(old.token())).await.unwrap();
    assert_eq!(grpc_status(&response).as_deref(), Some("0"));
    idp.serve(&[&old, &new]);
    let response = service.call(call(new.token())).await.unwrap();
    assert_eq!(
        grpc_status(&response).as_deref(),
        Some("0"),
        "reached after the refresh"
    );
    let forged = new.token_as(Some("e3"), Algorithm::ES256);
    let response = service.call(call(forged)).await.unwrap();
    assert_eq!(
        grpc_status(&response).as_deref(),
        Some("16"),
        "UNAUTHENTICATED"
    );
}

/// The service behind the layer: answers OK when reached with a principal.
#[derive(Clone)]
struct Reached;

impl tower::Service<http::Request<Body>> for Reached {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let reached = request.extensions().get::<Principal>().is_some();
        let mut response = http::Response::new(Body::default());
        let status = if reached { "0" } else { "13" };
        response
            .headers_mut()
            .insert("grpc-status", status.parse().unwrap());
        std::future::ready(Ok(response))
    }
}

impl Signer {
    fn new_hs256(secret: &[u8]) -> Self {
        Self {
            kid: "h".to_owned(),
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            public_pem: String::new(),
            jwk: serde_json::Value::Null,
        }
    }
}

/// Unpadded base64url, for tokens made by hand.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An https identity provider whose certificate a private CA signed: a
/// std thread answering over rustls, once per connection.
fn https_idp(document: String) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/jwks", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            let _ = tls.write_all(response.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca.pem())
}

#[tokio::test]
async fn https_with_a_private_ca_given() {
    let key = Signer::es256("tls");
    let document = serde_json::json!({ "keys": [key.jwk] }).to_string();
    let (url, ca) = https_idp(document);
    let quick = JwksConfig {
        timeout: Duration::from_secs(2),
        startup: Duration::from_millis(300),
        ..JwksConfig::new(&url)
    };
    let untrusted = Authenticator::builder(None, None)
        .jwks(quick.clone())
        .start()
        .await;
    assert!(untrusted.is_err(), "the private CA is not a system root");
    let auth = Authenticator::builder(None, None)
        .jwks(JwksConfig {
            ca_pem: Some(ca.into_bytes()),
            ..quick
        })
        .start()
        .await
        .unwrap();
    assert!(verify(&auth, &key.token()).await.is_ok());
}
