//! Layered configuration shared by both binaries.
//!
//! Precedence, lowest to highest (the one place it is written down):
//! 1. built-in defaults (`#[serde(default)]` on the config types),
//! 2. the TOML file given on the command line,
//! 3. environment variables `<PREFIX>__<SECTION>__<KEY>` (for example
//!    `EDGE__UPLINK__KIND=http`); `_` in a key segment becomes `-`, values
//!    are parsed as TOML values when they parse (numbers, booleans, arrays)
//!    and taken as strings otherwise.
//!
//! Loading never stops at the first problem: unknown keys (all of them, with
//! their paths), the first type error (serde stops there) and every semantic
//! problem found by [`Validate`] are returned together as [`ConfigErrors`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// One problem in a configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for p in &self.0 {
            let path = if p.path.is_empty() { "<root>" } else { &p.path };
            writeln!(f, "  {path}: {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Semantic checks beyond what the types enforce.
pub trait Validate {
    /// Pushes every problem found; `path` helpers build the key paths.
    fn validate(&self, problems: &mut Vec<ConfigProblem>);
}

/// Loads `T` from an optional TOML file plus environment overrides taken from
/// `env` (pass `std::env::vars()` in production).
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigErrors> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigProblem::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )])
        })?,
        None => String::new(),
    };
    load_str(&text, env_prefix, env)
}

/// Like [`load`], from TOML text.
pub fn load_str<T: DeserializeOwned + Validate>(
    text: &str,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigErrors> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigErrors(vec![ConfigProblem::new("", format!("invalid TOML: {e}"))])
    })?;
    let mut problems = Vec::new();
    apply_env(&mut table, env_prefix, env, &mut problems);

    let mut unknown = Vec::new();
    let value = toml::Value::Table(table);
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for path in unknown {
        problems.push(ConfigProblem::new(path, "unknown key"));
    }
    match parsed {
        Ok(config) => {
            config.validate(&mut problems);
            if problems.is_empty() {
                Ok(config)
            } else {
                Err(ConfigErrors(problems))
            }
        }
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            problems.push(ConfigProblem::new(path, e.into_inner().to_string()));
            Err(ConfigErrors(problems))
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let marker = format!("{prefix}__");
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&marker))
        .collect();
    vars.sort();
    for (key, raw) in vars {
        let path: Vec<String> = key[marker.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase().replace('_', "-"))
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push(ConfigProblem::new(key, "malformed environment override"));
            continue;
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        if !insert_path(table, &path, value) {
            problems.push(ConfigProblem::new(
                path.join("."),
                format!("environment override {key} descends into a non-table"),
            ));
        }
    }
}

/// Sets `path` in `table` to `value`, creating tables on the way; false when
/// a non-table value is in the way.
fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> bool {
    match path {
        [] => false,
        [last] => {
            table.insert(last.clone(), value);
            true
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => insert_path(t, rest, value),
            _ => false,
        },
    }
}

/// Serde adapter for human durations (`"250ms"`, `"5s"`, `"1h 30m"`).
pub mod duration {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (e.g. \"250ms\", \"5s\")"
            ))
        })
    }
}

/// Like [`duration`], for optional keys (use with `#[serde(default)]`).
pub mod opt_duration {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// Parses a human duration such as `30s` (for command-line flags).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Inner {
        #[serde(default)]
        max_rows: u32,
        #[serde(with = "duration", default = "default_age")]
        max_age: Duration,
    }
    fn default_age() -> Duration {
        Duration::from_secs(1)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Cfg {
        name: String,
        #[serde(default = "inner_default")]
        batch: Inner,
    }
    fn inner_default() -> Inner {
        Inner {
            max_rows: 10,
            max_age: default_age(),
        }
    }

    impl Validate for Cfg {
        fn validate(&self, problems: &mut Vec<ConfigProblem>) {
            if self.batch.max_rows == 0 {
                problems.push(ConfigProblem::new("batch.max-rows", "must be at least 1"));
            }
            if self.name.is_empty() {
                problems.push(ConfigProblem::new("name", "must not be empty"));
            }
        }
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn environment_overrides_file_values() {
        let cfg: Cfg = load_str(
            "name = 'a'\n[batch]\nmax-rows = 5\nmax-age = '2s'\n",
            "T",
            vec![
                ("T__BATCH__MAX_ROWS".into(), "7".into()),
                ("T__NAME".into(), "b".into()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.name, "b");
        assert_eq!(cfg.batch.max_rows, 7);
        assert_eq!(cfg.batch.max_age, Duration::from_secs(2));
    }

    #[test]
    fn reports_every_unknown_key_and_semantic_problem_together() {
        let err = load_str::<Cfg>(
            "name = ''\ncolour = 1\n[batch]\nmax-rows = 0\nmax-agee = '1s'\n",
            "T",
            no_env(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"colour"), "{err}");
        assert!(paths.contains(&"batch.max-agee"), "{err}");
        assert!(paths.contains(&"batch.max-rows"), "{err}");
        assert!(paths.contains(&"name"), "{err}");
    }

    #[test]
    fn type_errors_name_their_key() {
        let err =
            load_str::<Cfg>("name = 'x'\n[batch]\nmax-age = 'soon'\n", "T", no_env()).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].path, "batch.max-age");
        assert!(err.0[0].message.contains("invalid duration"), "{err}");
    }
}
