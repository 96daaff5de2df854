//! Secret settings: a database URL with its password, a JWT secret, a SASL
//! password. A [`Secret`] never prints (not in `Debug`, not in an error),
//! and every secret setting can be given as a file instead (`..._FILE`), as
//! Kubernetes and Compose mount secrets.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context as _;

/// A secret value: it never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret in `path`, without one trailing newline (`\n` or `\r\n`):
    /// what `echo` and most editors leave at the end of a file. The error
    /// names the file, never its content.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret file {}", path.display()))?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if text.is_empty() {
            anyhow::bail!("the secret file {} is empty", path.display());
        }
        Ok(Self(text.to_owned()))
    }

    /// The secret given directly, or read from its file: at most one of the
    /// two is set (clap refuses both). `None` when neither is.
    pub fn resolve(value: Option<&Secret>, file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        match (value, file) {
            (Some(value), _) => Ok(Some(value.clone())),
            (None, Some(path)) => Self::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let url: Secret = "postgres://user:secret@host/db".parse().unwrap();
        assert!(!format!("{url:?}").contains("secret@"));
    }

    #[test]
    fn a_file_loses_one_trailing_newline_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("billing-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, expected) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" spaced \n", " spaced "),
        ] {
            let path = dir.join("secret");
            std::fs::write(&path, content).unwrap();
            assert_eq!(Secret::from_file(&path).unwrap().expose(), expected);
        }
        std::fs::write(dir.join("empty"), "\n").unwrap();
        assert!(Secret::from_file(&dir.join("empty")).is_err());
        let missing = Secret::from_file(&dir.join("missing")).unwrap_err();
        assert!(format!("{missing:#}").contains("missing"));
        std::fs::write(dir.join("secret"), "hunter2\n").unwrap();
        let given = Secret::new("direct");
        assert_eq!(
            Secret::resolve(Some(&given), None)
                .unwrap()
                .unwrap()
                .expose(),
            "direct"
        );
        assert_eq!(
            Secret::resolve(None, Some(&dir.join("secret")))
                .unwrap()
                .unwrap()
                .expose(),
            "hunter2"
        );
        assert!(Secret::resolve(None, None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
