//! Layered configuration: defaults, then the TOML file, then `TIERGATE__SECTION__FIELD`
//! environment overrides. Unknown fields are rejected with their dotted path named.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The prefix of environment overrides; path segments are separated by a double underscore.
pub const ENV_PREFIX: &str = "TIERGATE__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment override {var} cannot be applied: {message}")]
    Env { var: String, message: String },
    #[error("invalid config at `{path}`: {message}")]
    Invalid { path: String, message: String },
}

/// Loads `T` from an optional TOML file plus environment overrides.
///
/// Fields absent from both take the type's serde defaults, so an empty file gives the defaults.
pub fn load<T, I>(file: Option<&Path>, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    load_with(file, env, |_| Ok(()))
}

/// [`load`], with `adjust` applied to the merged table (file, then environment) before it is
/// deserialized: where a setting was given explicitly is still visible there.
pub fn load_with<T, I>(
    file: Option<&Path>,
    env: I,
    adjust: impl FnOnce(&mut toml::Table) -> Result<(), ConfigError>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let mut table = match file {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    apply_env_overrides(&mut table, env)?;
    adjust(&mut table)?;
    from_table(table)
}

/// The process environment as `load` reads it. `std::env::vars` would panic on a variable
/// that is not UTF-8: those are skipped, unless they are ours (`TIERGATE__…`), which is an
/// error rather than a silently dropped setting.
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (key, value) in std::env::vars_os() {
        let Ok(key) = key.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => vars.push((key, value)),
            Err(_) if key.starts_with(ENV_PREFIX) => {
                return Err(ConfigError::Env {
                    var: key,
                    message: "the value is not valid UTF-8".to_owned(),
                });
            }
            Err(_) => {}
        }
    }
    Ok(vars)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim().to_owned(),
        })
}

/// Deserializes with the dotted path of the failing field in the error.
fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    from_value(toml::Value::Table(table), "")
}

/// Deserializes `value` found at `prefix` (e.g. `device.`), naming the failing field's path.
pub fn from_value<T: DeserializeOwned>(value: toml::Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = format!("{prefix}{}", err.path());
        ConfigError::Invalid {
            path,
            message: err.into_inner().to_string(),
        }
    })
}

/// Applies `TIERGATE__A__B=value` as `a.b = value`. The value is read as a TOML value when it
/// parses as one (numbers, booleans, arrays, quoted strings) and as a bare string otherwise.
fn apply_env_overrides<I>(table: &mut toml::Table, env: I) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(key, _)| key.starts_with(ENV_PREFIX))
        .collect();
    // Sorted so that the outcome does not depend on the environment's order.
    overrides.sort();
    for (var, raw) in overrides {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty path segment".to_owned(),
            });
        }
        set_path(table, &path, parse_env_value(&raw)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty path".to_owned());
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{segment}` is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Server {
        listen: String,
        max_body_bytes: u64,
        tags: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Root {
        server: Server,
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn no_file_and_no_env_gives_defaults() {
        let root: Root = load(None, Vec::new()).unwrap();
        assert_eq!(root, Root::default());
    }

    #[test]
    fn env_overrides_file_and_types_are_parsed() {
        let file = write("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n");
        let env = vec![
            (
                "TIERGATE__SERVER__MAX_BODY_BYTES".to_owned(),
                "2048".to_owned(),
            ),
            (
                "TIERGATE__SERVER__TAGS".to_owned(),
                "[\"a\", \"b\"]".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let root: Root = load(Some(file.path()), env).unwrap();
        assert_eq!(root.server.listen, "127.0.0.1:1");
        assert_eq!(root.server.max_body_bytes, 2048);
        assert_eq!(root.server.tags, vec!["a", "b"]);
    }

    #[test]
    fn bare_env_string_is_kept_as_string() {
        let env = vec![(
            "TIERGATE__SERVER__LISTEN".to_owned(),
            "0.0.0.0:80".to_owned(),
        )];
        let root: Root = load(None, env).unwrap();
        assert_eq!(root.server.listen, "0.0.0.0:80");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let file = write("[server]\nlisen = \"x\"\n");
        let err = load::<Root, _>(Some(file.path()), Vec::new()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server"), "{text}");
        assert!(text.contains("lisen"), "{text}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let env = vec![(
            "TIERGATE__SERVER__MAX_BODY_BYTES".to_owned(),
            "lots".to_owned(),
        )];
        let err = load::<Root, _>(None, env).unwrap_err();
        assert!(err.to_string().contains("server.max_body_bytes"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let file = write("[server\n");
        let err = load::<Root, _>(Some(file.path()), Vec::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn env_cannot_descend_into_a_scalar() {
        let env = vec![("TIERGATE__SERVER__LISTEN__PORT".to_owned(), "1".to_owned())];
        let file = write("[server]\nlisten = \"x\"\n");
        let err = load::<Root, _>(Some(file.path()), env).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }
}
