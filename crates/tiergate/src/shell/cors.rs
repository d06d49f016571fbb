//! CORS on the HTTP listener (`[server.cors]`), off unless configured: without it the node
//! sends no CORS headers, so a browser refuses to let another origin's script read an answer
//! (and never sends the `application/json` POST that needs a preflight).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, header};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// `[server.cors]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins whose pages may call the API, e.g. `"https://app.example.com"` (scheme, host
    /// and port, exactly as the browser sends `Origin`); `"*"` alone allows any origin.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_origins.is_empty() {
            return Err("must list at least one origin (leave [server.cors] out for none)".into());
        }
        if self.allowed_origins.iter().any(|o| o == "*") {
            if self.allowed_origins.len() > 1 {
                return Err("`*` allows every origin and cannot be combined with others".into());
            }
            return Ok(());
        }
        for origin in &self.allowed_origins {
            let fit = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && HeaderValue::from_str(origin).is_ok()
                && !origin.contains(char::is_whitespace);
            if !fit {
                return Err(format!(
                    "`{origin}` is not an origin: scheme://host[:port], no path, no trailing `/`"
                ));
            }
        }
        Ok(())
    }

    /// The layer: preflights answered for these origins, `GET`/`POST` with the headers the API
    /// reads, and the routing headers exposed to scripts.
    pub fn layer(&self) -> CorsLayer {
        let origins = if self.allowed_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.allowed_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        let names = |names: &[&'static str]| -> Vec<HeaderName> {
            names.iter().map(|n| HeaderName::from_static(n)).collect()
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(
                [header::AUTHORIZATION, header::CONTENT_TYPE]
                    .into_iter()
                    .chain(names(&[
                        "x-api-key",
                        "x-request-id",
                        "x-tiergate-tier-constraint",
                    ]))
                    .collect::<Vec<_>>(),
            )
            .expose_headers(
                [header::RETRY_AFTER]
                    .into_iter()
                    .chain(names(&[
                        "x-request-id",
                        "x-tiergate-tier",
                        "x-tiergate-reason",
                        "x-tiergate-complexity",
                        "x-tiergate-local-confidence",
                        "x-tiergate-degraded",
                        "x-tiergate-node",
                        "x-tiergate-cache",
                    ]))
                    .collect::<Vec<_>>(),
            )
            .max_age(PREFLIGHT_MAX_AGE)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn origins(list: &[&str]) -> CorsConfig {
        CorsConfig {
            allowed_origins: list.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn origins_are_checked() {
        origins(&["https://app.example.com", "http://localhost:3000"])
            .validate()
            .unwrap();
        origins(&["*"]).validate().unwrap();
        for bad in [
            &[][..],
            &["*", "https://a.example"],
            &["app.example.com"],
            &["https://a.example/"],
        ] {
            assert!(origins(bad).validate().is_err(), "{bad:?}");
        }
    }
}
