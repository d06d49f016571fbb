//! `[[tenants]]`: who may call the node, with which keys (their SHA-256 digests), at what
//! rate, at which tiers and with which models. Checked whole at load time: a bad digest, a
//! digest shared by two tenants, or a tier set the router cannot express is refused, named.

use std::collections::HashMap;

use serde::Deserialize;
use tiergate_router::tier::{Tier, TierConstraint};

use super::keys::{KeyDigest, parse_digest};

/// Longest tenant name: it is a metric label and shows in every log line of its requests.
const MAX_NAME_CHARS: usize = 64;
/// Highest `requests_per_second` (a bucket finer than a microsecond is a typo).
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

/// One tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Shown in logs, traces and `tiergate_tenant_requests_total{tenant}`; letters, digits,
    /// `-`, `_` and `.`.
    pub name: String,
    /// SHA-256 digests (64 hex digits) of the tenant's API keys (`tiergate keys hash`); more
    /// than one lets a key be rotated without downtime.
    pub key_sha256: Vec<String>,
    /// Inference requests per second (fractions allowed); absent: no limit.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests that may arrive at once above the rate; default: the rate rounded up (at
    /// least 1). Only with `requests_per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Completion tokens per minute, charged up front as each request's token budget
    /// (`max_tokens`, or the node's default); absent: no limit.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// The tiers that may answer this tenant; absent: every tier. `["edge"]` keeps every
    /// request on the node that received it.
    #[serde(default)]
    pub allowed_tiers: Option<Vec<Tier>>,
    /// The model ids this tenant may ask for; absent: every model the node serves.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
}

/// A config error: the dotted path of the field and what is wrong with it.
pub type Invalid = (String, String);

impl TenantConfig {
    /// The key digests, parsed.
    pub fn digests(&self, index: usize) -> Result<Vec<KeyDigest>, Invalid> {
        if self.key_sha256.is_empty() {
            return Err((
                format!("tenants[{index}].key_sha256"),
                "must list at least one key hash (`tiergate keys new --tenant NAME`)".to_owned(),
            ));
        }
        (self.key_sha256.iter().enumerate())
            .map(|(k, hex)| {
                parse_digest(hex.trim())
                    .map_err(|message| (format!("tenants[{index}].key_sha256[{k}]"), message))
            })
            .collect()
    }

    /// The burst of the request bucket.
    pub fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            let rate = self.requests_per_second.unwrap_or(1.0);
            (rate.ceil().clamp(1.0, f64::from(u32::MAX))) as u32
        })
    }
}

/// Checks every tenant, and that no key digest and no name is used twice.
pub fn validate(tenants: &[TenantConfig], local_tier: Tier) -> Result<(), Invalid> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut owners: HashMap<KeyDigest, usize> = HashMap::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let at = |field: &str| format!("tenants[{i}].{field}");
        let name = tenant.name.as_str();
        let fit_name = !name.is_empty()
            && name.len() <= MAX_NAME_CHARS
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !fit_name {
            return Err((
                at("name"),
                format!(
                    "`{name}`: 1 to {MAX_NAME_CHARS} letters, digits, `-`, `_` or `.` (it is a metric label)"
                ),
            ));
        }
        if let Some(first) = names.insert(name, i) {
            return Err((
                at("name"),
                format!("`{name}` is also the name of tenants[{first}]"),
            ));
        }
        for (k, digest) in tenant.digests(i)?.into_iter().enumerate() {
            if let Some(owner) = owners.insert(digest, i) {
                let whose = if owner == i {
                    "is listed twice for this tenant".to_owned()
                } else {
                    format!("is also a key of tenant `{}`", tenants[owner].name)
                };
                return Err((
                    format!("tenants[{i}].key_sha256[{k}]"),
                    format!("this key hash {whose}: a key must identify one tenant"),
                ));
            }
        }
        match tenant.requests_per_second {
            Some(rate) if !(rate.is_finite() && rate > 0.0 && rate <= MAX_REQUESTS_PER_SECOND) => {
                return Err((
                    at("requests_per_second"),
                    format!("must be above 0 and at most {MAX_REQUESTS_PER_SECOND}"),
                ));
            }
            None if tenant.burst.is_some() => {
                return Err((
                    at("burst"),
                    "needs requests_per_second (the rate the burst sits on)".to_owned(),
                ));
            }
            _ => {}
        }
        if tenant.burst == Some(0) {
            return Err((at("burst"), "must be at least 1".to_owned()));
        }
        if tenant.tokens_per_minute == Some(0) {
            return Err((
                at("tokens_per_minute"),
                "must be at least 1 (leave it out for no limit)".to_owned(),
            ));
        }
        if let Some(tiers) = &tenant.allowed_tiers {
            constraint_for_tiers(tiers, local_tier)
                .map_err(|message| (at("allowed_tiers"), message))?;
        }
        if tenant
            .allowed_models
            .as_ref()
            .is_some_and(|models| models.is_empty() || models.iter().any(|m| m.trim().is_empty()))
        {
            return Err((
                at("allowed_models"),
                "must list model ids (leave it out to allow every model)".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The routing constraint that keeps a tenant's requests within `allowed` tiers, on a node of
/// `local` tier. Tiers below the node's own cannot be reached from it and are ignored; the
/// router expresses "this node only", "up to regional", "cloud only" and "any", so other sets
/// (regional alone on an edge node, edge and cloud without regional) are refused.
pub fn constraint_for_tiers(allowed: &[Tier], local: Tier) -> Result<TierConstraint, String> {
    let reachable: Vec<Tier> = Tier::ALL.into_iter().filter(|t| *t >= local).collect();
    let mut set: Vec<Tier> = reachable
        .iter()
        .copied()
        .filter(|t| allowed.contains(t))
        .collect();
    set.dedup();
    if set.is_empty() {
        return Err(format!(
            "none of these tiers can answer on a {local} node (it reaches {})",
            names(&reachable)
        ));
    }
    if set == reachable {
        return Ok(TierConstraint::None);
    }
    if set == [local] {
        return Ok(TierConstraint::EdgeOnly);
    }
    if set == [Tier::Cloud] {
        return Ok(TierConstraint::AtLeastCloud);
    }
    if set == [local, Tier::Regional] {
        return Ok(TierConstraint::AtMostRegional);
    }
    Err(format!(
        "{} cannot be expressed on a {local} node: allow this node's tier alone, up to regional, the cloud alone, or all",
        names(&set)
    ))
}

fn names(tiers: &[Tier]) -> String {
    tiers
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A client's constraint within its tenant's: the narrower of the two, or `None` when they
/// contradict (a tenant kept at the edge asking for the cloud).
pub fn narrow(tenant: TierConstraint, client: TierConstraint) -> Option<TierConstraint> {
    use TierConstraint::{AtMostRegional, EdgeOnly, None as Any};
    match (tenant, client) {
        (Any, client) => Some(client),
        (tenant, Any) => Some(tenant),
        (a, b) if a == b => Some(a),
        (EdgeOnly, AtMostRegional) | (AtMostRegional, EdgeOnly) => Some(EdgeOnly),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::auth::keys::digest_hex;

    fn tenant(name: &str, keys: &[&str]) -> TenantConfig {
        TenantConfig {
            name: name.to_owned(),
            key_sha256: keys.iter().map(|k| digest_hex(k)).collect(),
            requests_per_second: None,
            burst: None,
            tokens_per_minute: None,
            allowed_tiers: None,
            allowed_models: None,
        }
    }

    fn refused(tenants: &[TenantConfig]) -> Invalid {
        validate(tenants, Tier::Edge).unwrap_err()
    }

    #[test]
    fn good_tenants_pass() {
        let mut a = tenant("team-a", &["key-a-0123456789", "key-a2-0123456789"]);
        a.requests_per_second = Some(0.5);
        a.burst = Some(3);
        a.tokens_per_minute = Some(1000);
        a.allowed_tiers = Some(vec![Tier::Edge]);
        a.allowed_models = Some(vec!["tiergate".to_owned()]);
        validate(&[a, tenant("team.b_2", &["key-b-0123456789"])], Tier::Edge).unwrap();
        validate(&[], Tier::Edge).unwrap();
    }

    #[test]
    fn a_key_hash_shared_by_two_tenants_is_refused_naming_both() {
        let (path, message) = refused(&[
            tenant("a", &["key-a-0123456789"]),
            tenant("b", &["key-b-0123456789", "key-a-0123456789"]),
        ]);
        assert_eq!(path, "tenants[1].key_sha256[1]");
        assert!(message.contains("tenant `a`"), "{message}");
        let (path, message) = refused(&[tenant("a", &["key-a-0123456789", "key-a-0123456789"])]);
        assert_eq!(path, "tenants[0].key_sha256[1]");
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn bad_hex_and_missing_keys_are_refused() {
        let mut bad = tenant("a", &[]);
        bad.key_sha256 = vec!["not-a-hash".to_owned()];
        assert_eq!(refused(&[bad.clone()]).0, "tenants[0].key_sha256[0]");
        bad.key_sha256 = vec!["g".repeat(64)];
        assert!(refused(&[bad.clone()]).1.contains("hex"));
        bad.key_sha256.clear();
        assert_eq!(refused(&[bad]).0, "tenants[0].key_sha256");
    }

    #[test]
    fn names_limits_and_lists_are_checked() {
        type Change = Box<dyn Fn(&mut TenantConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|t| t.name = String::new()), "name"),
            (Box::new(|t| t.name = "has space".into()), "name"),
            (
                Box::new(|t| t.requests_per_second = Some(0.0)),
                "requests_per_second",
            ),
            (
                Box::new(|t| t.requests_per_second = Some(f64::NAN)),
                "requests_per_second",
            ),
            (Box::new(|t| t.burst = Some(2)), "burst"),
            (
                Box::new(|t| t.tokens_per_minute = Some(0)),
                "tokens_per_minute",
            ),
            (
                Box::new(|t| t.allowed_models = Some(vec![])),
                "allowed_models",
            ),
            (
                Box::new(|t| t.allowed_tiers = Some(vec![])),
                "allowed_tiers",
            ),
            (
                Box::new(|t| t.allowed_tiers = Some(vec![Tier::Regional])),
                "allowed_tiers",
            ),
        ];
        for (change, field) in cases {
            let mut t = tenant("a", &["key-a-0123456789"]);
            change(&mut t);
            assert_eq!(refused(&[t]).0, format!("tenants[0].{field}"));
        }
        let (path, message) = refused(&[
            tenant("a", &["key-a-0123456789"]),
            tenant("a", &["key-b-0123456789"]),
        ]);
        assert_eq!(path, "tenants[1].name");
        assert!(message.contains("tenants[0]"), "{message}");
    }

    #[test]
    fn tier_sets_become_the_routers_constraints() {
        use Tier::{Cloud, Edge, Regional};
        let on_edge = |tiers: &[Tier]| constraint_for_tiers(tiers, Edge);
        assert_eq!(on_edge(&[Edge]), Ok(TierConstraint::EdgeOnly));
        assert_eq!(
            on_edge(&[Edge, Regional]),
            Ok(TierConstraint::AtMostRegional)
        );
        assert_eq!(on_edge(&[Cloud]), Ok(TierConstraint::AtLeastCloud));
        assert_eq!(on_edge(&[Cloud, Edge, Regional]), Ok(TierConstraint::None));
        assert!(on_edge(&[Regional]).is_err());
        assert!(on_edge(&[Edge, Cloud]).is_err());
        // On a regional node the edge is out of reach; regional alone is "this node only".
        assert_eq!(
            constraint_for_tiers(&[Edge, Regional], Regional),
            Ok(TierConstraint::EdgeOnly)
        );
        assert!(constraint_for_tiers(&[Edge], Regional).is_err());
    }

    #[test]
    fn a_clients_constraint_narrows_within_its_tenants() {
        use TierConstraint::*;
        assert_eq!(narrow(None, AtLeastCloud), Some(AtLeastCloud));
        assert_eq!(narrow(EdgeOnly, None), Some(EdgeOnly));
        assert_eq!(narrow(EdgeOnly, AtMostRegional), Some(EdgeOnly));
        assert_eq!(narrow(AtMostRegional, EdgeOnly), Some(EdgeOnly));
        assert_eq!(narrow(EdgeOnly, AtLeastCloud), Option::None);
        assert_eq!(narrow(AtLeastCloud, EdgeOnly), Option::None);
        assert_eq!(narrow(AtMostRegional, AtLeastCloud), Option::None);
    }
}
