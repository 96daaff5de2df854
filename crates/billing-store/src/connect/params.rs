//! The connection string, read as libpq reads it: the TLS parameters taken
//! out (and checked), the rest left for tokio-postgres, in URL or key=value
//! form; and [`redact`], the string fit for a log line.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{config_error, describe};
use crate::StoreError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(config_error(format!(
                    "invalid sslmode \"{other}\": expected disable, allow, prefer, require, \
                     verify-ca or verify-full"
                )));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// tokio-postgres's mode: whether TLS is tried, and whether plaintext
    /// is acceptable. CertificateCheck is this module's.
    pub(super) fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Allow | Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted roots come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's roots (`sslrootcert=system`).
    System,
}

/// A TLS protocol version, as `ssl_min_protocol_version` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(key: &str, value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "TLSv1" => Self::V1_0,
            "TLSv1.1" => Self::V1_1,
            "TLSv1.2" => Self::V1_2,
            "TLSv1.3" => Self::V1_3,
            other => {
                return Err(config_error(format!(
                    "invalid {key} \"{other}\": expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"
                )));
            }
        })
    }
}

/// The TLS parameters of a connection string, as written (defaults not yet
/// applied, files not yet read): what [`parse`] takes out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`; libpq's default when absent (`prefer`, or `verify-full`
    /// with `sslrootcert=system`).
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `sslsni`.
    pub sni: bool,
    pub min_version: TlsVersion,
    pub max_version: Option<TlsVersion>,
    /// `sslcertmode=disable`: never send a client certificate.
    pub no_client_cert: bool,
}

/// Splits a libpq connection string (URL or key=value) into what
/// tokio-postgres reads and the TLS parameters this module handles.
pub fn parse(conn_str: &str) -> Result<(tokio_postgres::Config, TlsParams), StoreError> {
    let mut taken = Taken::default();
    let rest = if is_url(conn_str) {
        let (base, query) = match conn_str.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (conn_str, None),
        };
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let taken_here = match pair.split_once('=') {
                Some((key, value)) => {
                    taken.take(&percent_decode(key)?, || percent_decode(value))?
                }
                None => false,
            };
            if !taken_here && !pair.is_empty() {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in key_values(conn_str)? {
            if !taken.take(&key, || Ok(value.clone()))? {
                kept.push(format!("{key}='{}'", quote(&value)));
            }
        }
        kept.join(" ")
    };
    let config: tokio_postgres::Config = rest
        .parse()
        // tokio-postgres's messages name options, never their values.
        .map_err(|e: tokio_postgres::Error| config_error(describe(&e)))?;
    Ok((config, taken.finish()?))
}

/// Accumulates the parameters taken out of a connection string (the last
/// of a repeated one wins, as in libpq).
#[derive(Default)]
struct Taken {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert_mode: Option<String>,
}

impl Taken {
    /// Takes `key` when it is one of this module's; `value` is only asked
    /// for then (and so only decoded then).
    fn take(
        &mut self,
        key: &str,
        value: impl FnOnce() -> Result<String, StoreError>,
    ) -> Result<bool, StoreError> {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            "sslsni" => &mut self.sni,
            "ssl_min_protocol_version" => &mut self.min_version,
            "ssl_max_protocol_version" => &mut self.max_version,
            "sslcertmode" => &mut self.cert_mode,
            "sslcompression" => return Ok(true),
            "gssencmode" => {
                return match value()?.as_str() {
                    "disable" | "prefer" | "allow" => Ok(true),
                    "require" => Err(config_error(
                        "gssencmode=require is not supported (no GSSAPI encryption here)".into(),
                    )),
                    other => Err(config_error(format!("invalid gssencmode \"{other}\""))),
                };
            }
            "sslpassword" | "sslcrl" | "sslcrldir" => {
                if value()?.is_empty() {
                    return Ok(true);
                }
                return Err(config_error(format!(
                    "{key} is not supported: {}",
                    match key {
                        "sslpassword" => "give sslkey an unencrypted key file",
                        _ => "certificate revocation lists are not checked",
                    }
                )));
            }
            _ => return Ok(false),
        };
        *slot = Some(value()?);
        Ok(true)
    }

    fn finish(self) -> Result<TlsParams, StoreError> {
        let path = |value: Option<String>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
        let root_cert = self
            .root_cert
            .filter(|v| !v.is_empty())
            .map(|v| match v.as_str() {
                "system" => RootCert::System,
                _ => RootCert::File(PathBuf::from(v)),
            });
        let mode = match self.mode.as_deref() {
            Some(mode) => SslMode::parse(mode)?,
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(config_error(format!(
                "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
            )));
        }
        let sni = match self.sni.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => {
                return Err(config_error(format!(
                    "invalid sslsni \"{other}\": expected 0 or 1"
                )));
            }
        };
        let min_version = match self.min_version.as_deref() {
            None | Some("") => TlsVersion::V1_2,
            Some(v) => TlsVersion::parse("ssl_min_protocol_version", v)?,
        };
        let max_version = match self.max_version.as_deref() {
            None | Some("") => None,
            Some(v) => Some(TlsVersion::parse("ssl_max_protocol_version", v)?),
        };
        if max_version.is_some_and(|max| max < TlsVersion::V1_2) {
            return Err(config_error(
                "ssl_max_protocol_version below TLSv1.2 is not supported".into(),
            ));
        }
        if max_version.is_some_and(|max| max < min_version) {
            return Err(config_error(
                "invalid SSL protocol version range: ssl_max_protocol_version is below \
                 ssl_min_protocol_version"
                    .into(),
            ));
        }
        let no_client_cert = match self.cert_mode.as_deref() {
            None | Some("allow") => false,
            Some("disable") => true,
            Some("require") => {
                return Err(config_error("sslcertmode=require is not supported".into()));
            }
            Some(other) => {
                return Err(config_error(format!("invalid sslcertmode \"{other}\"")));
            }
        };
        Ok(TlsParams {
            mode,
            root_cert,
            cert: path(self.cert),
            key: path(self.key),
            sni,
            min_version,
            max_version,
            no_client_cert,
        })
    }
}

/// `~/.postgresql/<name>`, where libpq looks by default.
pub(super) fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

fn is_url(conn_str: &str) -> bool {
    conn_str.starts_with("postgres://") || conn_str.starts_with("postgresql://")
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config_error("invalid percent-encoding in a parameter".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| config_error("a parameter is not UTF-8 once percent-decoded".into()))
}

/// The pairs of a key=value connection string, values unquoted (libpq's
/// syntax: `key = value`, `key='quoted \' value'`, backslash escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(config_error(format!(
                "invalid connection string: missing \"=\" after \"{key}\""
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(config_error(format!(
                            "invalid connection string: unterminated quoted value of \"{key}\""
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `value` escaped for a single-quoted key=value value.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// `conn_str` with its password replaced by `***`, for messages and logs.
/// A string that does not parse becomes `<connection string>`.
pub fn redact(conn_str: &str) -> String {
    if is_url(conn_str) {
        let (base, query) = match conn_str.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (conn_str, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let authority = &base[scheme_end..authority_end];
        let mut out = base[..scheme_end].to_owned();
        match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(hosts);
            }
            None => out.push_str(authority),
        }
        out.push_str(&base[authority_end..]);
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key == "password" || key == "sslpassword" => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    } else {
        match key_values(conn_str) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(key, value)| {
                    if key == "password" || key == "sslpassword" {
                        format!("{key}=***")
                    } else {
                        format!("{key}='{}'", quote(&value))
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "<connection string>".into(),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_unquote_and_escape() {
        assert_eq!(
            key_values(r"host = db  password='a b\'c' user=x\ y").unwrap(),
            vec![
                ("host".to_owned(), "db".to_owned()),
                ("password".to_owned(), "a b'c".to_owned()),
                ("user".to_owned(), "x y".to_owned()),
            ]
        );
        assert!(key_values("host").is_err());
        assert!(key_values("password='open").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fetc%2Fca.pem").unwrap(), "/etc/ca.pem");
        assert!(percent_decode("%zz").is_err());
    }
}
