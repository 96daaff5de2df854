//! The JWT settings: the secret from a file (as Kubernetes and Compose mount
//! secrets), keys by id, a JWKS URL, and secrets that never print.

use std::path::{Path, PathBuf};
use std::process::Command;

use billing_server::config::JwtArgs;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    jwt: JwtArgs,
}

const SECRET: &str = "file-secret-0123456789";

/// A directory of its own for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("billing-jwt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("billing").chain(args.iter().copied()))
}

fn bearer(secret: &str) -> String {
    let token =
        billing_api::auth::mint_hs256(secret.as_bytes(), "ops", "service", None, 60, None, None)
            .unwrap();
    format!("Bearer {token}")
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn the_secret_file_loses_one_trailing_newline_and_never_prints() {
    let dir = scratch("file");
    let file = dir.join("jwt-secret");
    for ending in ["\n", "\r\n", ""] {
        std::fs::write(&file, format!("{SECRET}{ending}")).unwrap();
        let cli = parse(&["--jwt-secret-file", path(&file)]).unwrap();
        let secret = cli.jwt.jwt_secret.as_ref().unwrap();
        assert_eq!(secret.expose(), SECRET, "{ending:?}");
        assert!(!format!("{cli:?}").contains(SECRET));
        let auth = cli.jwt.authenticator().await.unwrap();
        assert!(!format!("{auth:?}").contains(SECRET));
        assert!(auth.authenticate(Some(&bearer(SECRET))).is_ok());
    }
    // Only one newline goes: a second one is part of the secret.
    std::fs::write(&file, format!("{SECRET}\n\n")).unwrap();
    let cli = parse(&["--jwt-secret-file", path(&file)]).unwrap();
    let auth = cli.jwt.authenticator().await.unwrap();
    assert!(auth.authenticate(Some(&bearer(SECRET))).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let dir = scratch("errors");
    let file = dir.join("jwt-secret");
    std::fs::write(&file, SECRET).unwrap();
    assert!(
        parse(&["--jwt-secret", SECRET, "--jwt-secret-file", path(&file)]).is_err(),
        "the secret or its file, not both"
    );
    let missing = parse(&["--jwt-secret-file", path(&dir.join("missing"))]).unwrap_err();
    assert!(missing.to_string().contains("missing"), "{missing}");
    std::fs::write(&file, "short-secret\n").unwrap();
    let cli = parse(&["--jwt-secret-file", path(&file)]).unwrap();
    let short = cli.jwt.authenticator().await.unwrap_err();
    assert!(short.to_string().contains("16 bytes"), "{short}");
    assert!(!format!("{short:#}").contains("short-secret"));
    let cli = parse(&[
        "--jwt-secrets",
        "a=0123456789abcdef-a,bsecretvalue-without-kid",
    ])
    .unwrap();
    let malformed = cli.jwt.authenticator().await.unwrap_err();
    assert!(
        format!("{malformed:#}").contains("entry 2"),
        "{malformed:#}"
    );
    assert!(!format!("{malformed:#}").contains("bsecretvalue"));
    assert!(!format!("{malformed:#}").contains("0123456789abcdef-a"));
    assert!(!format!("{cli:?}").contains("0123456789abcdef-a"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn keys_by_id_and_a_jwks_url_are_configured() {
    let dir = scratch("keys");
    let (a, b) = (
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    );
    std::fs::write(dir.join("a.pem"), a.public_key_pem()).unwrap();
    std::fs::write(dir.join("b.pem"), b.public_key_pem()).unwrap();
    let list = format!(
        "a={},b={}",
        path(&dir.join("a.pem")),
        path(&dir.join("b.pem"))
    );
    let cli = parse(&[
        "--jwt-public-keys",
        &list,
        "--jwt-secrets",
        "h1=0123456789abcdef-1,h2=0123456789abcdef-2",
    ])
    .unwrap();
    let auth = cli.jwt.authenticator().await.unwrap();
    let sign = |kid: &str, alg, key: &jsonwebtoken::EncodingKey| {
        let header = jsonwebtoken::Header {
            kid: Some(kid.to_owned()),
            ..jsonwebtoken::Header::new(alg)
        };
        let claims = serde_json::json!({
            "sub": "svc", "role": "service",
            "exp": jsonwebtoken::get_current_timestamp() + 60,
        });
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, key).unwrap()
        )
    };
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(a.serialize_pem().as_bytes()).unwrap();
    let ed = jsonwebtoken::EncodingKey::from_ed_pem(b.serialize_pem().as_bytes()).unwrap();
    let h2 = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef-2");
    use jsonwebtoken::Algorithm::{ES256, EdDSA, HS256};
    assert!(auth.authenticate(Some(&sign("a", ES256, &ec))).is_ok());
    assert!(auth.authenticate(Some(&sign("b", EdDSA, &ed))).is_ok());
    assert!(auth.authenticate(Some(&sign("h2", HS256, &h2))).is_ok());
    assert!(auth.authenticate(Some(&sign("h1", HS256, &h2))).is_err());
    assert!(auth.authenticate(Some(&sign("a", EdDSA, &ed))).is_err());
    let cli = parse(&["--jwt-public-keys", "no-equals-sign"]).unwrap();
    assert!(cli.jwt.authenticator().await.is_err());
    // A JWKS over plain http to another host: refused before anything is
    // fetched.
    let cli = parse(&["--jwt-jwks-url", "http://idp.example.com/jwks"]).unwrap();
    let err = cli.jwt.authenticator().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("BILLING_JWT_JWKS_ALLOW_HTTP"),
        "{err:#}"
    );
    // No key at all.
    let err = parse(&[]).unwrap().jwt.authenticator().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("BILLING_JWT_SECRET_FILE"),
        "{err:#}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn billing_token_reads_the_secret_file_and_help_never_shows_secrets() {
    let dir = scratch("cli");
    let file = dir.join("jwt-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let billing = env!("CARGO_BIN_EXE_billing");
    let out = Command::new(billing)
        .args(["token", "--role", "service"])
        .env_remove("BILLING_JWT_SECRET")
        .env("BILLING_JWT_SECRET_FILE", &file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = billing_api::auth::Authenticator::new(
        &billing_api::auth::VerifyingKey::Hs256(SECRET.as_bytes().to_vec()),
        None,
        None,
    )
    .unwrap();
    assert!(
        auth.authenticate(Some(&format!("Bearer {}", token.trim())))
            .is_ok()
    );
    for command in ["serve", "token"] {
        let help = Command::new(billing)
            .args([command, "--help"])
            .env("BILLING_JWT_SECRET", "help-secret-0123456789")
            .env("BILLING_JWT_SECRETS", "k=help-secrets-0123456789")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("--jwt-secret-file"), "{help}");
        assert!(!help.contains("help-secret"), "{help}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn billing_token_signs_with_a_key_by_id_for_a_rotation_by_hand() {
    const OLD: &str = "old-secret-0123456789abcdef";
    const NEW: &str = "new-secret-0123456789abcdef";
    let secrets = format!("old={OLD},new={NEW}");
    let billing = env!("CARGO_BIN_EXE_billing");
    let mint = |kid: &str| {
        Command::new(billing)
            .args(["token", "--role", "service", "--kid", kid])
            .env_remove("BILLING_JWT_SECRET")
            .env_remove("BILLING_JWT_SECRET_FILE")
            .env("BILLING_JWT_SECRETS", &secrets)
            .output()
            .unwrap()
    };
    let out = mint("new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("new"));
    // The service with both keys takes it; with only the old one, not.
    let both = parse(&["--jwt-secrets", &secrets])
        .unwrap()
        .jwt
        .authenticator()
        .await
        .unwrap();
    assert!(both.authenticate(Some(&format!("Bearer {token}"))).is_ok());
    let only_old = parse(&["--jwt-secrets", &format!("old={OLD}")])
        .unwrap()
        .jwt
        .authenticator()
        .await
        .unwrap();
    assert!(
        only_old
            .authenticate(Some(&format!("Bearer {token}")))
            .is_err()
    );
    // A key id that is not there is refused, and its secrets are not shown.
    let missing = mint("nope");
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("nope"), "{said}");
    assert!(!said.contains(OLD) && !said.contains(NEW), "{said}");
}
