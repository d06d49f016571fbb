//! The privacy guard (`[privacy]`): personal data detected in a request keeps it on the node
//! that received it (`action = "pin"`), or is replaced by a placeholder in the copy forwarded
//! upstream (`action = "redact"`; the local model still sees the original). Detectors: e-mail
//! addresses, phone numbers, payment card numbers (Luhn-checked) and IBANs (mod-97-checked), so
//! that an order number or a sum does not count as a card or an account.

use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

/// A kind of personal data the guard looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Phone,
    Card,
    Iban,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::Iban => "iban",
        }
    }

    fn pattern(self) -> &'static Regex {
        match self {
            Detector::Email => &EMAIL,
            Detector::Phone => &PHONE,
            Detector::Card => &CARD,
            Detector::Iban => &IBAN,
        }
    }

    /// Whether a pattern match really is this kind of data (checksums, digit counts).
    fn confirms(self, found: &str) -> bool {
        let digits: Vec<u32> = found.chars().filter_map(|c| c.to_digit(10)).collect();
        match self {
            Detector::Email => true,
            Detector::Phone => (9..=15).contains(&digits.len()),
            Detector::Card => (13..=19).contains(&digits.len()) && luhn(&digits),
            Detector::Iban => iban_checks(found),
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Detector::Email => "[email]",
            Detector::Phone => "[phone]",
            Detector::Card => "[card]",
            Detector::Iban => "[iban]",
        }
    }
}

// The patterns are constants: a failure to compile is a bug caught by the tests.
#[allow(clippy::expect_used)]
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("email pattern")
});
/// An international prefix, or digit groups joined by separators: a bare run of digits (a sum,
/// an order number) is not a phone number.
#[allow(clippy::expect_used)]
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}")
        .expect("phone pattern")
});
#[allow(clippy::expect_used)]
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("card pattern"));
#[allow(clippy::expect_used)]
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b").expect("iban pattern")
});

/// The Luhn checksum of a card number's digits.
fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1.
fn iban_checks(found: &str) -> bool {
    let compact: String = found.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        remainder = if value < 10 {
            (remainder * 10 + value) % 97
        } else {
            (remainder * 100 + value) % 97
        };
    }
    remainder == 1
}

/// What to do with a request in which personal data was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyAction {
    /// Answer it on this node only (as `tier_constraint = edge_only`).
    #[default]
    Pin,
    /// Forward it as planned, with each finding replaced by a placeholder (`[card]`...).
    Redact,
}

/// `[privacy]`: off (no detectors) unless configured.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Which detectors run: any of "email", "phone", "card", "iban".
    pub detectors: Vec<Detector>,
    pub action: PrivacyAction,
}

impl PrivacyConfig {
    /// The detectors whose data appears in `text`, each once, in config order.
    pub fn detect(&self, text: &str) -> Vec<Detector> {
        self.detectors
            .iter()
            .copied()
            .filter(|detector| {
                detector
                    .pattern()
                    .find_iter(text)
                    .any(|m| detector.confirms(m.as_str()))
            })
            .collect()
    }

    /// `text` with every confirmed finding of the configured detectors replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for detector in &self.detectors {
            text = detector
                .pattern()
                .replace_all(&text, |caps: &regex::Captures<'_>| {
                    let found = caps.get(0).map_or("", |m| m.as_str());
                    if detector.confirms(found) {
                        detector.placeholder().to_owned()
                    } else {
                        found.to_owned()
                    }
                })
                .into_owned();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn all() -> PrivacyConfig {
        PrivacyConfig {
            detectors: vec![
                Detector::Email,
                Detector::Phone,
                Detector::Card,
                Detector::Iban,
            ],
            action: PrivacyAction::Pin,
        }
    }

    #[test]
    fn finds_personal_data_and_checks_it() {
        let guard = all();
        let found = |text: &str| guard.detect(text);
        assert_eq!(found("write to jane.doe@example.co.uk"), [Detector::Email]);
        assert_eq!(found("call me on +44 20 7946 0958"), [Detector::Phone]);
        assert_eq!(found("my number is (555) 123-4567"), [Detector::Phone]);
        assert_eq!(
            found("card 4111 1111 1111 1111 exp 12/29"),
            [Detector::Card]
        );
        assert_eq!(
            found("pay to DE89 3704 0044 0532 0130 00"),
            [Detector::Iban]
        );
        assert_eq!(found("pay to GB82WEST12345698765432"), [Detector::Iban]);
    }

    #[test]
    fn numbers_that_fail_their_checks_are_not_personal_data() {
        let guard = all();
        for text in [
            "what is 4111111111111112 divided by 4", // fails Luhn
            "order 1234567890123 shipped",           // fails Luhn
            "what is 12 times 7",
            "the year 1969 and 2024",
            "an @ sign alone, and user@localhost",
        ] {
            assert_eq!(guard.detect(text), [], "{text}");
        }
        let iban_only = PrivacyConfig {
            detectors: vec![Detector::Iban],
            action: PrivacyAction::Pin,
        };
        assert_eq!(
            iban_only.detect("DE89 3704 0044 0532 0130 01, mod 97 fails"),
            []
        );
    }

    #[test]
    fn redaction_replaces_only_what_it_confirmed() {
        let guard = all();
        assert_eq!(
            guard.redact("mail jane@example.com, card 4111-1111-1111-1111, order 4111111111111112"),
            "mail [email], card [card], order 4111111111111112"
        );
        let none = PrivacyConfig::default();
        assert_eq!(none.detect("jane@example.com"), []);
        assert_eq!(none.redact("jane@example.com"), "jane@example.com");
    }

    #[test]
    fn config_names_detectors_and_refuses_unknown_ones() {
        let config: PrivacyConfig =
            toml::from_str("detectors = [\"card\", \"iban\"]\naction = \"redact\"").unwrap();
        assert_eq!(config.detectors, [Detector::Card, Detector::Iban]);
        assert_eq!(config.action, PrivacyAction::Redact);
        assert!(toml::from_str::<PrivacyConfig>("detectors = [\"ssn\"]").is_err());
    }
}
