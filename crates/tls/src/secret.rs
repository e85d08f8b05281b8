//! Passwords and tokens: never printed, readable from a file.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TlsError;

/// A password or token. `Debug`, `Display` and serialisation print
/// `<redacted>`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The secret given inline or, with `file`, the file's content without its
/// trailing line break (read on every call, so a rotated file is picked up
/// at the next connection). Both given is a settings error.
pub fn read_secret(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, TlsError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(TlsError::Settings(format!(
            "{key} and {key}-file are both set; keep one"
        ))),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(TlsError::Settings(format!(
                    "{key}-file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn a_secret_file_is_read_without_its_line_break_and_both_forms_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        let s = read_secret("password", None, Some(&path)).unwrap().unwrap();
        assert_eq!(s.expose(), "abc123");
        let both = read_secret("password", Some(&Secret::new("x")), Some(&path));
        assert!(both.unwrap_err().to_string().contains("password-file"));
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret("password", None, Some(&path)).is_err());
        let missing = read_secret("password", None, Some(&dir.path().join("nope")));
        assert!(missing.unwrap_err().to_string().contains("nope"));
    }
}
