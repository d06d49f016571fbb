//! Tenants and API keys (`[[tenants]]`): who is calling, and what they may do. The serving
//! stack's authentication layer (`shell::authenticate`) finds the tenant of a request's key and
//! checks its request rate; the resolved [`Tenant`] travels in the request's extensions to the
//! front ends (allowed models) and the node (allowed tiers, token budget, cache keyspace).
//! Without tenants, authentication is off.

mod config;
pub mod keys;
mod limits;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use prometheus::IntCounterVec;
use tiergate_api::request::Tenancy;
use tiergate_router::tier::{Tier, TierConstraint};
use tiergate_upstream::{PEER_KEY_METADATA, PeerKey};

pub use config::{Invalid, TenantConfig, constraint_for_tiers, narrow, validate};
pub use limits::{Bucket, Limited};

use crate::metrics::NodeMetrics;
use crate::node::{NodeError, NodeRequest};
use keys::KeyTable;

/// The values of `tiergate_tenant_requests_total`'s `outcome` label.
const OUTCOMES: [&str; 4] = ["accepted", "rate_limited", "token_limited", "forbidden"];
/// The values of `tiergate_auth_failures_total`'s `reason` label.
const FAILURES: [AuthFailure; 3] = [
    AuthFailure::Missing,
    AuthFailure::Malformed,
    AuthFailure::UnknownKey,
];

/// A tenant as a running node holds it: its policy, its own buckets, its counters.
pub struct Tenant {
    name: String,
    /// The routing constraint its allowed tiers come to (`None`: any tier).
    constraint: TierConstraint,
    allowed_models: Option<Vec<String>>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    outcomes: IntCounterVec,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The name only: nothing of a key is held here, and nothing else is worth a log line.
        f.debug_tuple("Tenant").field(&self.name).finish()
    }
}

/// What the node asks of a tenant (the trait lives with the request model, `tiergate-api`).
impl Tenancy for Tenant {
    fn name(&self) -> &str {
        Tenant::name(self)
    }

    fn narrow(&self, constraint: TierConstraint) -> Result<TierConstraint, NodeError> {
        Tenant::narrow(self, constraint)
    }

    fn admit(&self, request: &mut NodeRequest) -> Result<(), NodeError> {
        Tenant::admit(self, request)
    }
}

impl Tenant {
    /// A tenant from its (validated) config.
    pub fn new(
        config: &TenantConfig,
        local_tier: Tier,
        outcomes: IntCounterVec,
    ) -> Result<Tenant, String> {
        let constraint = match &config.allowed_tiers {
            Some(tiers) => constraint_for_tiers(tiers, local_tier)?,
            None => TierConstraint::None,
        };
        let requests =
            match config.requests_per_second {
                Some(rate) => {
                    let burst = NonZeroU32::new(config.burst_or_default())
                        .ok_or_else(|| "burst must be at least 1".to_owned())?;
                    Some(Bucket::per_second(rate, burst).ok_or_else(|| {
                        format!("requests_per_second {rate} is not a usable rate")
                    })?)
                }
                None => None,
            };
        let tokens = config
            .tokens_per_minute
            .and_then(NonZeroU32::new)
            .map(Bucket::per_minute);
        // Every outcome exported from the start at 0, so that rates need no absent().
        for outcome in OUTCOMES {
            outcomes.with_label_values(&[config.name.as_str(), outcome]);
        }
        Ok(Tenant {
            name: config.name.clone(),
            constraint,
            allowed_models: config.allowed_models.clone(),
            requests,
            tokens,
            outcomes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn count(&self, outcome: &str) {
        self.outcomes
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
    }

    /// Takes one request from the tenant's request bucket; how long to wait when it is empty.
    pub fn admit_request(&self) -> Result<(), Duration> {
        let Some(bucket) = &self.requests else {
            return Ok(());
        };
        match bucket.take(1) {
            Ok(()) => Ok(()),
            Err(Limited::RetryAfter(wait)) => {
                self.count("rate_limited");
                Err(wait)
            }
            // A bucket always holds one request (burst >= 1).
            Err(Limited::NeverFits { .. }) => {
                self.count("rate_limited");
                Err(Duration::from_secs(1))
            }
        }
    }

    /// Whether the tenant may ask for `model` (what `/v1/models` lists for it).
    pub fn allows_model(&self, model: &str) -> bool {
        (self.allowed_models.as_ref()).is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }

    /// Refuses a model the tenant may not use (403 / PERMISSION_DENIED).
    pub fn check_model(&self, model: &str) -> Result<(), NodeError> {
        match &self.allowed_models {
            Some(allowed) if !self.allows_model(model) => {
                self.count("forbidden");
                Err(NodeError::PermissionDenied(format!(
                    "tenant `{}` may not use model `{model}`; it may use: {}",
                    self.name,
                    allowed.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// The request's tier constraint narrowed to the tenant's allowed tiers (the router's own
    /// constraint, so a tenant kept at the edge takes the path any edge-only request takes).
    pub fn narrow(&self, client: TierConstraint) -> Result<TierConstraint, NodeError> {
        narrow(self.constraint, client).ok_or_else(|| {
            self.count("forbidden");
            NodeError::PermissionDenied(format!(
                "tenant `{}` may not use tier constraint `{client}` (it is held to `{}`)",
                self.name, self.constraint
            ))
        })
    }

    /// Applies the tenant's policy to a request about to be served: its tiers, then its token
    /// budget, charged up front (the request's `max_new_tokens`, whether or not all are used).
    pub fn admit(&self, request: &mut NodeRequest) -> Result<(), NodeError> {
        request.constraint = self.narrow(request.constraint)?;
        if let Some(tokens) = &self.tokens {
            match tokens.take(request.sampling.max_new_tokens) {
                Ok(()) => {}
                Err(Limited::RetryAfter(wait)) => {
                    self.count("token_limited");
                    return Err(NodeError::TenantLimited {
                        message: format!(
                            "tenant `{}` is over its tokens_per_minute (this request asks for {} tokens)",
                            self.name, request.sampling.max_new_tokens
                        ),
                        retry_after: wait,
                    });
                }
                Err(Limited::NeverFits { asked, capacity }) => {
                    self.count("token_limited");
                    return Err(NodeError::InvalidArgument(format!(
                        "max_tokens {asked} is more than tenant `{}` may use in a minute ({capacity}); ask for fewer",
                        self.name
                    )));
                }
            }
        }
        self.count("accepted");
        Ok(())
    }
}

/// Why a request was not authenticated; the `reason` label of `tiergate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` and no `x-api-key`.
    Missing,
    /// A credential header that is not `Bearer <key>` in printable ASCII.
    Malformed,
    /// A key no tenant has.
    UnknownKey,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
        }
    }

    /// What the client is told; never the key it sent.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "an API key is required: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
            }
            AuthFailure::Malformed => {
                "the Authorization header must be `Bearer <key>`, the key in printable ASCII"
            }
            AuthFailure::UnknownKey => "the API key is not valid",
        }
    }
}

/// The node's tenants by key, and the peer key that lets other nodes through.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyTable<Arc<Tenant>>,
    peer_key: Option<PeerKey>,
    failures: IntCounterVec,
}

impl Authenticator {
    /// The authenticator for `tenants`, or `None` when there are none (authentication off).
    pub fn new(
        tenants: &[TenantConfig],
        local_tier: Tier,
        metrics: &NodeMetrics,
        peer_key: Option<PeerKey>,
    ) -> Result<Option<Arc<Authenticator>>, Invalid> {
        if tenants.is_empty() {
            return Ok(None);
        }
        validate(tenants, local_tier)?;
        let mut entries = Vec::new();
        for (i, config) in tenants.iter().enumerate() {
            let tenant = Tenant::new(config, local_tier, metrics.tenant_requests.clone())
                .map_err(|message| (format!("tenants[{i}]"), message))?;
            let tenant = Arc::new(tenant);
            for digest in config.digests(i)? {
                entries.push((digest, Arc::clone(&tenant)));
            }
        }
        for failure in FAILURES {
            metrics.auth_failures.with_label_values(&[failure.as_str()]);
        }
        Ok(Some(Arc::new(Authenticator {
            keys: KeyTable::new(entries),
            peer_key,
            failures: metrics.auth_failures.clone(),
        })))
    }

    /// The tenant whose key the request carries (`Authorization: Bearer`, else `x-api-key`).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, AuthFailure> {
        let found = credential(headers).and_then(|key| {
            self.keys
                .find(key)
                .map(Arc::clone)
                .ok_or(AuthFailure::UnknownKey)
        });
        if let Err(failure) = &found {
            self.failures.with_label_values(&[failure.as_str()]).inc();
        }
        found
    }

    /// Whether the request comes from a peer node: it carries the deployment's peer key
    /// (`x-tiergate-peer-key`). Peers forward requests their own node already authenticated.
    pub fn is_peer_key(&self, headers: &HeaderMap) -> bool {
        let presented = headers.get(PEER_KEY_METADATA).and_then(|v| v.to_str().ok());
        matches!((&self.peer_key, presented), (Some(key), Some(presented)) if key.matches(presented))
    }
}

/// The key a request presents, from `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn credential(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AuthFailure::Malformed);
        }
        return Ok(key);
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(AuthFailure::Malformed),
        None => Err(AuthFailure::Missing),
    }
}

#[cfg(test)]
mod tests;
