//! The tiers of the hierarchy and the constraints a client can put on them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A level of the hierarchy. Ordered from cheapest to strongest: `Edge < Regional < Cloud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Edge,
    Regional,
    Cloud,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 3] = [Tier::Edge, Tier::Regional, Tier::Cloud];

    /// The lowercase name used on the wire, in config and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Edge => "edge",
            Tier::Regional => "regional",
            Tier::Cloud => "cloud",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a tier (or not a tier constraint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {given:?}, expected one of: {expected}")]
pub struct ParseTierError {
    kind: &'static str,
    given: String,
    expected: &'static str,
}

impl FromStr for Tier {
    type Err = ParseTierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|tier| tier.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseTierError {
                kind: "tier",
                given: s.to_owned(),
                expected: "edge, regional, cloud",
            })
    }
}

/// What the client allows: which tiers may answer the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierConstraint {
    /// The router chooses.
    #[default]
    None,
    /// Answer at the node that received the request; never forward.
    EdgeOnly,
    /// May go to the regional tier but never to the cloud.
    AtMostRegional,
    /// Must be answered by the cloud tier.
    AtLeastCloud,
}

impl TierConstraint {
    /// Every constraint, in declaration order.
    pub const ALL: [TierConstraint; 4] = [
        TierConstraint::None,
        TierConstraint::EdgeOnly,
        TierConstraint::AtMostRegional,
        TierConstraint::AtLeastCloud,
    ];

    /// The snake_case name used in JSON and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TierConstraint::None => "none",
            TierConstraint::EdgeOnly => "edge_only",
            TierConstraint::AtMostRegional => "at_most_regional",
            TierConstraint::AtLeastCloud => "at_least_cloud",
        }
    }

    /// Whether an upstream of `tier` may be called under this constraint.
    /// (`EdgeOnly` forbids forwarding altogether; that is decided by the policy, not here.)
    pub fn allows_upstream(self, tier: Tier) -> bool {
        match self {
            TierConstraint::None => true,
            TierConstraint::EdgeOnly => false,
            TierConstraint::AtMostRegional => tier <= Tier::Regional,
            TierConstraint::AtLeastCloud => tier >= Tier::Cloud,
        }
    }
}

impl fmt::Display for TierConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TierConstraint {
    type Err = ParseTierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace('-', "_");
        TierConstraint::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(&wanted))
            .ok_or_else(|| ParseTierError {
                kind: "tier constraint",
                given: s.to_owned(),
                expected: "none, edge_only, at_most_regional, at_least_cloud",
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tiers_are_ordered_cheapest_first() {
        assert!(Tier::Edge < Tier::Regional && Tier::Regional < Tier::Cloud);
    }

    #[test]
    fn tier_names_round_trip_through_display_fromstr_and_serde() {
        for tier in Tier::ALL {
            assert_eq!(tier.to_string().parse::<Tier>().unwrap(), tier);
            let json = serde_json::to_string(&tier).unwrap();
            assert_eq!(json, format!("\"{}\"", tier.as_str()));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
        assert_eq!(" Cloud ".parse::<Tier>().unwrap(), Tier::Cloud);
    }

    #[test]
    fn unknown_tier_is_a_clear_error() {
        let err = "fog".parse::<Tier>().unwrap_err().to_string();
        assert!(
            err.contains("\"fog\"") && err.contains("edge, regional, cloud"),
            "{err}"
        );
        assert!(serde_json::from_str::<Tier>("\"Edge\"").is_err());
    }

    #[test]
    fn constraint_names_round_trip() {
        for c in TierConstraint::ALL {
            assert_eq!(c.to_string().parse::<TierConstraint>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<TierConstraint>(&json).unwrap(), c);
        }
        assert_eq!(
            "at-most-regional".parse::<TierConstraint>().unwrap(),
            TierConstraint::AtMostRegional
        );
        assert!("cloud_only".parse::<TierConstraint>().is_err());
    }

    #[test]
    fn constraints_filter_upstream_tiers() {
        use TierConstraint::*;
        assert!(None.allows_upstream(Tier::Cloud));
        assert!(!EdgeOnly.allows_upstream(Tier::Regional));
        assert!(AtMostRegional.allows_upstream(Tier::Regional));
        assert!(!AtMostRegional.allows_upstream(Tier::Cloud));
        assert!(AtLeastCloud.allows_upstream(Tier::Cloud));
        assert!(!AtLeastCloud.allows_upstream(Tier::Regional));
    }
}
