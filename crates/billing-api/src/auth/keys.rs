//! Verification keys, each pinned to the one algorithm it verifies: the
//! configured ones (a secret, PEM public keys) and those of a JWKS.

use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// A configured key tokens are verified with; it pins the one accepted
/// algorithm.
#[derive(Clone)]
pub enum VerifyingKey {
    /// A shared secret (HS256).
    Hs256(Vec<u8>),
    /// An RSA public key in PEM (RS256).
    Rs256(Vec<u8>),
    /// An EC P-256 public key in PEM (ES256).
    Es256(Vec<u8>),
    /// An Ed25519 public key in PEM (EdDSA).
    EdDsa(Vec<u8>),
}

impl VerifyingKey {
    /// A PEM public key, its algorithm told by the key itself: RSA is
    /// RS256, EC P-256 is ES256, Ed25519 is EdDSA.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let candidates = [
            Self::Rs256(pem.to_vec()),
            Self::Es256(pem.to_vec()),
            Self::EdDsa(pem.to_vec()),
        ];
        candidates
            .into_iter()
            .find(|key| Key::new(key).is_ok())
            .ok_or_else(|| {
                "not a PEM public key of RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)"
                    .to_owned()
            })
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Hs256(_) => "Hs256",
            Self::Rs256(_) => "Rs256",
            Self::Es256(_) => "Es256",
            Self::EdDsa(_) => "EdDsa",
        };
        write!(f, "VerifyingKey::{name}(<redacted>)")
    }
}

/// A key ready to verify, and the one algorithm it verifies.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.algorithm)
    }
}

/// Shortest HS256 secret accepted.
const MIN_SECRET_BYTES: usize = 16;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// An uncompressed P-256 point: 0x04, x, y.
const P256_POINT_BYTES: usize = 65;
/// An Ed25519 public key.
const ED25519_BYTES: usize = 32;

impl Key {
    /// A configured key, checked: secrets long enough, public keys of the
    /// sizes their algorithm needs.
    pub(crate) fn new(key: &VerifyingKey) -> Result<Self, String> {
        let (decoding, algorithm) = match key {
            VerifyingKey::Hs256(secret) if secret.len() < MIN_SECRET_BYTES => {
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
            VerifyingKey::EdDsa(pem) => (
                DecodingKey::from_ed_pem(pem)
                    .map_err(|e| format!("the Ed25519 public key: {e}"))?,
                Algorithm::EdDSA,
            ),
        };
        Self::checked(decoding, algorithm)
    }

    /// A key of a JWKS: a signing key (no `use`, or `use: sig`) of RS256,
    /// ES256 (P-256) or EdDSA (Ed25519), whose `alg`, when given, says so.
    /// Symmetric keys are never taken from a JWKS: a published secret is no
    /// secret.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err("not a signing key (use)".to_owned());
        }
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("a symmetric key (kty oct) is never accepted from a JWKS".to_owned());
            }
            _ => return Err("an unsupported key type or curve".to_owned()),
        };
        if let Some(alg) = jwk.common.key_algorithm
            && alg != KeyAlgorithm::from(algorithm)
        {
            return Err(format!(
                "alg {alg} is not supported for this key (only {algorithm:?})"
            ));
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("a malformed key: {e}"))?;
        Self::checked(decoding, algorithm)
    }

    /// Refuses keys that are too weak or of the wrong size (an Ed25519 key
    /// shorter than 32 bytes would even panic the verifier).
    fn checked(decoding: DecodingKey, algorithm: Algorithm) -> Result<Self, String> {
        let ok = match (algorithm, decoding.kind()) {
            (Algorithm::HS256, _) => true,
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, .. }) => {
                significant(n) >= MIN_RSA_MODULUS_BYTES
            }
            // A DER RSAPublicKey: the modulus dominates its length.
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                der.len() > MIN_RSA_MODULUS_BYTES
            }
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                point.len() == P256_POINT_BYTES
            }
            (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(key)) => key.len() == ED25519_BYTES,
            _ => false,
        };
        if !ok {
            return Err(match algorithm {
                Algorithm::RS256 => "RSA keys must have at least 2048 bits",
                Algorithm::ES256 => "EC keys must be on the P-256 curve",
                Algorithm::EdDSA => "EdDSA keys must be Ed25519 keys",
                _ => "an unsupported key",
            }
            .to_owned());
        }
        Ok(Self {
            decoding,
            algorithm,
        })
    }
}

/// The length of a big-endian number without its leading zeros.
fn significant(n: &[u8]) -> usize {
    n.len() - n.iter().take_while(|b| **b == 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn public_keys_tell_their_algorithm() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            VerifyingKey::from_pem(ec.public_key_pem().as_bytes()).unwrap(),
            VerifyingKey::Es256(_)
        ));
        assert!(matches!(
            VerifyingKey::from_pem(ed.public_key_pem().as_bytes()).unwrap(),
            VerifyingKey::EdDsa(_)
        ));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(VerifyingKey::from_pem(p384.public_key_pem().as_bytes()).is_err());
        assert!(VerifyingKey::from_pem(b"not a key").is_err());
    }

    #[test]
    fn jwks_keys_are_signing_keys_of_the_supported_kinds() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let ed = jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "a"}));
        assert_eq!(Key::from_jwk(&ed).unwrap().algorithm, Algorithm::EdDSA);
        let short = jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}));
        assert!(Key::from_jwk(&short).is_err(), "short keys would panic");
        let enc = jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "enc"}));
        assert!(Key::from_jwk(&enc).is_err());
        let wrong_alg =
            jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "HS256"}));
        assert!(Key::from_jwk(&wrong_alg).is_err());
        let oct = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}));
        assert!(Key::from_jwk(&oct).is_err(), "no secrets from a JWKS");
        let small_rsa = jwk(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}));
        assert!(Key::from_jwk(&small_rsa).is_err());
    }
}
