//! How every Kafka client of ours reaches the brokers: the bootstrap servers
//! and the security settings the producer, the topic admin, the health probe
//! and `billing tail` share, so that none of them can speak PLAINTEXT to a
//! cluster the others reach over TLS.
//!
//! The settings are librdkafka's own (`security.protocol`, `sasl.*`,
//! `ssl.*`), named for us by `BILLING_KAFKA_*` variables; anything else
//! librdkafka knows passes through as `key=value` pairs. The SASL password
//! never prints: not in `Debug`, not in an error.

use std::fmt;
use std::str::FromStr;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication: the zero-configuration default.
    #[default]
    Plaintext,
    /// TLS; the brokers' certificates are verified.
    Ssl,
    /// SASL authentication without TLS (the password crosses in clear with
    /// PLAIN; SCRAM never sends it).
    SaslPlaintext,
    /// SASL authentication over TLS: what managed Kafka asks for.
    SaslSsl,
}

impl SecurityProtocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub const fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub const fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = ConnectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err(ConnectionError(format!(
                "unknown Kafka security protocol {s:?}: plaintext, ssl, sasl_plaintext or sasl_ssl"
            ))),
        }
    }
}

/// A SASL mechanism librdkafka can speak without Kerberos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password itself, sent to the broker: only over TLS.
    Plain,
    ScramSha256,
    /// SCRAM with SHA-512: the password never crosses the network.
    #[default]
    ScramSha512,
}

impl SaslMechanism {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = ConnectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(ConnectionError(format!(
                "unknown SASL mechanism {s:?}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            ))),
        }
    }
}

/// SASL credentials. The password never prints.
#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A setting that cannot work; the message names it, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(String);

/// Where the brokers are and how to talk to them.
#[derive(Clone)]
pub struct KafkaConnection {
    /// Bootstrap servers, `host:port,...`.
    pub brokers: String,
    pub security_protocol: SecurityProtocol,
    /// Required with a `sasl_*` protocol, refused without one.
    pub sasl: Option<SaslCredentials>,
    /// A PEM file of the CA certificates that sign the brokers'
    /// certificates; without it, the system's trust store.
    pub ssl_ca_location: Option<String>,
    /// Any other librdkafka properties, applied last (so they can override
    /// ours). Their values may be secrets (`ssl.key.password`), so they never
    /// print either.
    pub extra: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: Vec<&str> = self.extra.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("extra_keys", &extra)
            .finish()
    }
}

impl KafkaConnection {
    /// Plaintext to `brokers`: what development and most tests use.
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            ssl_ca_location: None,
            extra: Vec::new(),
        }
    }

    /// Checks that the settings belong together: SASL credentials exactly
    /// when the protocol authenticates, a CA file only where TLS is spoken,
    /// and well-formed pass-through properties.
    pub fn validate(&self) -> Result<(), ConnectionError> {
        if self.brokers.trim().is_empty() {
            return Err(ConnectionError("no Kafka brokers given".to_owned()));
        }
        match (&self.sasl, self.security_protocol.uses_sasl()) {
            (None, true) => {
                return Err(ConnectionError(format!(
                    "security protocol {} needs BILLING_KAFKA_SASL_USERNAME and \
                     BILLING_KAFKA_SASL_PASSWORD (or BILLING_KAFKA_SASL_PASSWORD_FILE)",
                    self.security_protocol.as_str()
                )));
            }
            (Some(_), false) => {
                return Err(ConnectionError(format!(
                    "SASL credentials are set but the security protocol is {}: \
                     use sasl_ssl (or sasl_plaintext)",
                    self.security_protocol.as_str()
                )));
            }
            (Some(sasl), true) if sasl.username.is_empty() => {
                return Err(ConnectionError("the SASL username is empty".to_owned()));
            }
            _ => {}
        }
        if self.ssl_ca_location.is_some() && !self.security_protocol.uses_tls() {
            return Err(ConnectionError(format!(
                "BILLING_KAFKA_SSL_CA_LOCATION is set but the security protocol is {}: \
                 use ssl (or sasl_ssl)",
                self.security_protocol.as_str()
            )));
        }
        for (key, _) in &self.extra {
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(ConnectionError(format!(
                    "bad librdkafka property name {key:?} in BILLING_KAFKA_CONFIG"
                )));
            }
        }
        Ok(())
    }

    /// A librdkafka configuration with the brokers and every security
    /// setting; each client adds its own properties to it.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        match &self.ssl_ca_location {
            Some(ca) => {
                config.set("ssl.ca.location", ca);
            }
            // librdkafka looks for the system's CA bundle in the usual
            // places, which also finds the one copied into our `FROM
            // scratch` image (OpenSSL's compiled-in default may not).
            None if self.security_protocol.uses_tls() => {
                config.set("ssl.ca.location", "probe");
            }
            None => {}
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// `error` without the value of a property: librdkafka's configuration
/// errors name the property and repeat its value, which may be a password
/// (`sasl.password`, `ssl.key.password`, anything passed through). Every
/// client of ours is created through this.
pub fn redacted(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "<redacted>")
            };
            KafkaError::ClientConfig(code, description, key, "<redacted>".to_owned())
        }
        other => other,
    }
}

/// Parses `key=value,key=value` (BILLING_KAFKA_CONFIG). A value may hold a
/// comma written as `\,`; whitespace around keys and values is dropped.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, ConnectionError> {
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut items = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                current.push(',');
                chars.next();
            }
            ',' => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    for item in items {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            // The item may be a secret typed without its key: never echo it.
            return Err(ConnectionError(
                "BILLING_KAFKA_CONFIG is key=value,key=value; an item has no '='".to_owned(),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConnectionError(
                "BILLING_KAFKA_CONFIG has an item without a key".to_owned(),
            ));
        }
        pairs.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> SaslCredentials {
        SaslCredentials {
            mechanism: SaslMechanism::ScramSha512,
            username: "billing".to_owned(),
            password: "hunter2-very-secret".to_owned(),
        }
    }

    #[test]
    fn protocols_and_mechanisms_parse_as_librdkafka_spells_them() {
        for p in [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ] {
            assert_eq!(p.as_str().parse::<SecurityProtocol>(), Ok(p));
            assert_eq!(p.as_str().to_uppercase().parse::<SecurityProtocol>(), Ok(p));
        }
        for m in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ] {
            assert_eq!(m.as_str().parse::<SaslMechanism>(), Ok(m));
        }
        assert_eq!(
            "scram_sha_256".parse::<SaslMechanism>(),
            Ok(SaslMechanism::ScramSha256)
        );
        assert!("tls".parse::<SecurityProtocol>().is_err());
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn every_client_gets_the_same_security_settings() {
        let connection = KafkaConnection {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl: Some(sasl()),
            ssl_ca_location: Some("/etc/kafka/ca.pem".to_owned()),
            extra: vec![(
                "ssl.endpoint.identification.algorithm".into(),
                "none".into(),
            )],
            ..KafkaConnection::plaintext("b1:9093,b2:9093")
        };
        connection.validate().unwrap();
        let config = connection.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("billing"));
        assert_eq!(config.get("sasl.password"), Some("hunter2-very-secret"));
        assert_eq!(config.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
        let plain = KafkaConnection::plaintext("b:9092").client_config();
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.password"), None);
        assert_eq!(plain.get("ssl.ca.location"), None);
        let system_roots = KafkaConnection {
            security_protocol: SecurityProtocol::Ssl,
            ..KafkaConnection::plaintext("b:9093")
        };
        assert_eq!(
            system_roots.client_config().get("ssl.ca.location"),
            Some("probe")
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let mut c = KafkaConnection::plaintext("b:9092");
        c.security_protocol = SecurityProtocol::SaslSsl;
        assert!(c.validate().unwrap_err().to_string().contains("USERNAME"));
        c.security_protocol = SecurityProtocol::Plaintext;
        c.sasl = Some(sasl());
        assert!(
            c.validate().is_err(),
            "credentials over no SASL are a mistake"
        );
        c.sasl = None;
        c.ssl_ca_location = Some("ca.pem".into());
        assert!(c.validate().is_err(), "a CA without TLS is a mistake");
        assert!(KafkaConnection::plaintext(" ").validate().is_err());
    }

    #[test]
    fn the_password_never_prints() {
        let connection = KafkaConnection {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl: Some(sasl()),
            extra: vec![("ssl.key.password".into(), "another-secret".into())],
            ..KafkaConnection::plaintext("b:9093")
        };
        let shown = format!("{connection:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("another-secret"), "{shown}");
        assert!(shown.contains("ssl.key.password"), "{shown}");
    }

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let connection = KafkaConnection {
            extra: vec![(
                "sasl.oauthbearer.client.secret".into(),
                "s3cr3t-v4lue".into(),
            )],
            ..KafkaConnection::plaintext("b:9092")
        };
        let refused = connection
            .client_config()
            .set("no.such.property", "s3cr3t-v4lue")
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
            .map_err(redacted)
            .unwrap_err()
            .to_string();
        assert!(!refused.contains("s3cr3t"), "{refused}");
        assert!(refused.contains("property"), "{refused}");
    }

    #[test]
    fn pass_through_properties_parse() {
        assert_eq!(
            parse_properties(" a.b = 1 ,c=x\\,y,, d= ").unwrap(),
            vec![
                ("a.b".to_owned(), "1".to_owned()),
                ("c".to_owned(), "x,y".to_owned()),
                ("d".to_owned(), String::new()),
            ]
        );
        assert!(parse_properties("").unwrap().is_empty());
        let err = parse_properties("a=1,s3cr3t").unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(parse_properties("=1").is_err());
    }
}
