//! Device profiles (`[device]`): what a class of device can spend per request (memory,
//! latency), the accuracy it is meant to reach, and the engine settings that suit it.
//!
//! Precedence, for every engine and limit setting a profile carries (first one set wins):
//! 1. the setting itself in `[engine]` / `[limits]` (file or `TIERGATE__ENGINE__…`);
//! 2. the field of the same meaning in `[device]` (file or `TIERGATE__DEVICE__…`);
//! 3. the named profile's value;
//! 4. the built-in default of `[engine]` / `[limits]`.
//!
//! Budgets (memory, latency, accuracy, `stop_at_budget_share`) have only 2 and 3: without a
//! profile or a field, a budget is not monitored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiergate_engine::{ModelVariant, VariantChoice};

/// The device classes a node can be told it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceProfile {
    RaspberryPi,
    NvidiaJetson,
    MobileDevice,
    EdgeServer,
}

impl DeviceProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceProfile::RaspberryPi => "raspberry_pi",
            DeviceProfile::NvidiaJetson => "nvidia_jetson",
            DeviceProfile::MobileDevice => "mobile_device",
            DeviceProfile::EdgeServer => "edge_server",
        }
    }

    /// The profile's values (docs/configuration.md has the same table).
    pub fn defaults(self) -> ProfileValues {
        let values = |memory_mb, latency_ms, accuracy, threads, variant, context, max_tokens| {
            ProfileValues {
                memory_budget_mb: Some(memory_mb),
                latency_budget_ms: Some(latency_ms),
                accuracy_target: Some(accuracy),
                threads: Some(threads),
                variant: Some(variant),
                context_length: Some(context),
                max_tokens: Some(max_tokens),
                stop_at_budget_share: Some(0.9),
            }
        };
        // A Pi 4/5: 4 slow cores, a few GB shared with the OS; the int4 graph.
        // A Jetson (Orin Nano class) runs the CPU graph here (no CUDA provider is built in),
        // with more memory and cores to spare. A phone: two big cores to use, little memory,
        // short answers. An edge server: cores and memory, long answers, and `auto` for the
        // graph (int4-fast on x86-64 without AVX-512, where it is the fastest, and with AVX-512
        // under a gate calibrated on that CPU kind; int4 elsewhere).
        let (int4, int8) = (
            VariantChoice::Named(ModelVariant::Int4),
            VariantChoice::Named(ModelVariant::Int8),
        );
        match self {
            DeviceProfile::RaspberryPi => values(1024, 8000, 0.6, 4, int4, 1024, 128),
            DeviceProfile::NvidiaJetson => values(2048, 4000, 0.7, 6, int8, 2048, 256),
            DeviceProfile::MobileDevice => values(512, 5000, 0.6, 2, int4, 512, 96),
            DeviceProfile::EdgeServer => values(8192, 2000, 0.8, 8, VariantChoice::Auto, 2048, 512),
        }
    }
}

/// The fields a profile sets, each overridable in `[device]` (where they sit as is: serde's
/// `flatten` cannot be combined with `deny_unknown_fields`, so [`DeviceSection`] repeats them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProfileValues {
    /// Resident memory the node may use, in MiB.
    pub memory_budget_mb: Option<u64>,
    /// Time one request may take, end to end, in ms (compared with the p95 of recent ones).
    pub latency_budget_ms: Option<u64>,
    /// The share of answers meant to be right (reported; a node cannot measure it live).
    pub accuracy_target: Option<f64>,
    /// ONNX Runtime intra-op threads per session (`engine.intra_op_threads`).
    pub threads: Option<usize>,
    /// The model graph (`engine.variant`), or `auto`.
    pub variant: Option<VariantChoice>,
    /// The context cap (`engine.context_length`).
    pub context_length: Option<usize>,
    /// Largest `max_tokens` a request may ask for (`limits.max_new_tokens`).
    pub max_tokens: Option<u32>,
    /// Local generation stops at this share of the latency budget (finish reason `length`,
    /// marked as a budget stop). 1.0 stops at the budget itself.
    pub stop_at_budget_share: Option<f64>,
}

impl ProfileValues {
    /// Each field of `self` where set, else `base`'s.
    fn over(self, base: ProfileValues) -> ProfileValues {
        ProfileValues {
            memory_budget_mb: self.memory_budget_mb.or(base.memory_budget_mb),
            latency_budget_ms: self.latency_budget_ms.or(base.latency_budget_ms),
            accuracy_target: self.accuracy_target.or(base.accuracy_target),
            threads: self.threads.or(base.threads),
            variant: self.variant.or(base.variant),
            context_length: self.context_length.or(base.context_length),
            max_tokens: self.max_tokens.or(base.max_tokens),
            stop_at_budget_share: self.stop_at_budget_share.or(base.stop_at_budget_share),
        }
    }
}

/// The `[device]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSection {
    /// The device class; its values apply where neither `[device]` nor the setting itself
    /// says otherwise. Absent: only the fields given here apply.
    pub profile: Option<DeviceProfile>,
    /// Field-by-field overrides of the profile; see [`ProfileValues`] for each one's meaning.
    pub memory_budget_mb: Option<u64>,
    pub latency_budget_ms: Option<u64>,
    pub accuracy_target: Option<f64>,
    pub threads: Option<usize>,
    pub variant: Option<VariantChoice>,
    pub context_length: Option<usize>,
    pub max_tokens: Option<u32>,
    pub stop_at_budget_share: Option<f64>,
    /// How often the budget monitor measures (RSS, latency p95).
    #[serde(with = "crate::config::duration")]
    pub check_interval: Duration,
    /// The recent requests whose latency p95 is compared with the budget.
    pub latency_window: usize,
}

impl Default for DeviceSection {
    fn default() -> Self {
        DeviceSection {
            profile: None,
            memory_budget_mb: None,
            latency_budget_ms: None,
            accuracy_target: None,
            threads: None,
            variant: None,
            context_length: None,
            max_tokens: None,
            stop_at_budget_share: None,
            check_interval: Duration::from_secs(5),
            latency_window: 100,
        }
    }
}

/// The profile in effect: the named profile's values under `[device]`'s overrides.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EffectiveProfile {
    /// `None` when `[device]` names no profile (only its own fields apply).
    pub profile: Option<DeviceProfile>,
    #[serde(flatten)]
    pub values: ProfileValues,
}

impl EffectiveProfile {
    /// The memory budget in bytes.
    pub fn memory_budget_bytes(&self) -> Option<u64> {
        self.values
            .memory_budget_mb
            .map(|mb| mb.saturating_mul(1024 * 1024))
    }

    /// The latency budget of one request.
    pub fn latency_budget(&self) -> Option<Duration> {
        self.values.latency_budget_ms.map(Duration::from_millis)
    }

    /// How long local generation may run: the budget's share, when both are set.
    pub fn generation_budget(&self) -> Option<Duration> {
        let budget = self.latency_budget()?;
        let share = self.values.stop_at_budget_share?;
        Some(budget.mul_f64(share))
    }
}

impl DeviceSection {
    /// The profile in effect.
    pub fn effective(&self) -> EffectiveProfile {
        let base = self
            .profile
            .map(DeviceProfile::defaults)
            .unwrap_or_default();
        let overrides = ProfileValues {
            memory_budget_mb: self.memory_budget_mb,
            latency_budget_ms: self.latency_budget_ms,
            accuracy_target: self.accuracy_target,
            threads: self.threads,
            variant: self.variant,
            context_length: self.context_length,
            max_tokens: self.max_tokens,
            stop_at_budget_share: self.stop_at_budget_share,
        };
        EffectiveProfile {
            profile: self.profile,
            values: overrides.over(base),
        }
    }

    /// Checks the fields; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let v = self.effective().values;
        if v.memory_budget_mb == Some(0) {
            return Err("memory_budget_mb must be above 0".to_owned());
        }
        if v.latency_budget_ms == Some(0) {
            return Err("latency_budget_ms must be above 0".to_owned());
        }
        if v.accuracy_target.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
            return Err("accuracy_target must be within [0, 1]".to_owned());
        }
        if v.threads == Some(0) {
            return Err("threads must be at least 1".to_owned());
        }
        if v.context_length.is_some_and(|c| c < 2) {
            return Err("context_length must be at least 2".to_owned());
        }
        if v.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".to_owned());
        }
        if v.stop_at_budget_share
            .is_some_and(|s| !(s > 0.0 && s <= 1.0))
        {
            return Err("stop_at_budget_share must be within (0, 1]".to_owned());
        }
        if self.check_interval < Duration::from_millis(10) {
            return Err("check_interval must be at least 10ms".to_owned());
        }
        if self.latency_window == 0 {
            return Err("latency_window must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Writes the effective profile's engine and limit settings into the raw config `table`
/// wherever `[engine]` / `[limits]` do not set them (precedence in the module docs). Called
/// on the merged file + environment table, before it is deserialized, so that an explicit
/// setting is told apart from a default.
pub fn apply_to_table(table: &mut toml::Table, device: &DeviceSection) {
    let values = device.effective().values;
    let mut set_default = |section: &str, key: &str, value: toml::Value| {
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(inner) = entry {
            inner.entry(key.to_owned()).or_insert(value);
        }
    };
    let int = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    if let Some(threads) = values.threads {
        set_default("engine", "intra_op_threads", int(threads as u64));
    }
    if let Some(variant) = values.variant {
        set_default(
            "engine",
            "variant",
            toml::Value::String(variant.as_str().to_owned()),
        );
    }
    if let Some(context) = values.context_length {
        set_default("engine", "context_length", int(context as u64));
    }
    if let Some(max_tokens) = values.max_tokens {
        set_default("limits", "max_new_tokens", int(u64::from(max_tokens)));
        // The default answer length must stay within the cap.
        let default = crate::node::Limits::default().default_max_new_tokens;
        set_default(
            "limits",
            "default_max_new_tokens",
            int(u64::from(default.min(max_tokens))),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn section(toml_text: &str) -> DeviceSection {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_device_field_overrides_the_profile_one_field_at_a_time() {
        let device = section("profile = \"raspberry_pi\"\nlatency_budget_ms = 1234\n");
        let effective = device.effective();
        let pi = DeviceProfile::RaspberryPi.defaults();
        assert_eq!(effective.values.latency_budget_ms, Some(1234));
        assert_eq!(effective.values.memory_budget_mb, pi.memory_budget_mb);
        assert_eq!(effective.values.variant, Some(ModelVariant::Int4.into()));
        assert_eq!(effective.values.threads, pi.threads);
    }

    #[test]
    fn without_a_profile_only_the_given_fields_apply() {
        let effective = section("memory_budget_mb = 1\n").effective();
        assert_eq!(effective.profile, None);
        assert_eq!(effective.memory_budget_bytes(), Some(1024 * 1024));
        assert_eq!(effective.latency_budget(), None);
        assert_eq!(effective.values.variant, None);
    }

    #[test]
    fn an_explicit_engine_setting_beats_device_and_profile() {
        let mut table: toml::Table = toml::from_str(
            "[engine]\nvariant = \"fp32\"\n[limits]\nmax_new_tokens = 300\n\
             [device]\nprofile = \"mobile_device\"\nthreads = 3\n",
        )
        .unwrap();
        let device = section("profile = \"mobile_device\"\nthreads = 3\n");
        apply_to_table(&mut table, &device);
        let engine = table["engine"].as_table().unwrap();
        // 1: the setting itself.
        assert_eq!(engine["variant"].as_str(), Some("fp32"));
        assert_eq!(table["limits"]["max_new_tokens"].as_integer(), Some(300));
        // 2: the [device] field over the profile's 2 threads.
        assert_eq!(engine["intra_op_threads"].as_integer(), Some(3));
        // 3: the profile's value where nothing else is set.
        assert_eq!(engine["context_length"].as_integer(), Some(512));
        // The default answer length is kept within the profile's cap (64 <= 96 here).
        assert_eq!(
            table["limits"]["default_max_new_tokens"].as_integer(),
            Some(64)
        );
    }

    #[test]
    fn a_small_max_tokens_lowers_the_default_answer_length() {
        let mut table = toml::Table::new();
        apply_to_table(&mut table, &section("max_tokens = 16\n"));
        assert_eq!(table["limits"]["max_new_tokens"].as_integer(), Some(16));
        assert_eq!(
            table["limits"]["default_max_new_tokens"].as_integer(),
            Some(16)
        );
        // Nothing else is touched.
        assert!(!table.contains_key("engine"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        for (text, field) in [
            ("memory_budget_mb = 0", "memory_budget_mb"),
            ("accuracy_target = 1.5", "accuracy_target"),
            ("stop_at_budget_share = 0.0", "stop_at_budget_share"),
            ("stop_at_budget_share = 1.2", "stop_at_budget_share"),
            ("threads = 0", "threads"),
            ("latency_window = 0", "latency_window"),
        ] {
            let err = section(text).validate().unwrap_err();
            assert!(err.starts_with(field), "{text}: {err}");
        }
        assert!(toml::from_str::<DeviceSection>("profile = \"toaster\"").is_err());
        assert!(toml::from_str::<DeviceSection>("memory_mb = 1").is_err());
    }

    #[test]
    fn the_generation_budget_is_the_share_of_the_latency_budget() {
        let effective = section("latency_budget_ms = 1000\nstop_at_budget_share = 0.5").effective();
        assert_eq!(
            effective.generation_budget(),
            Some(Duration::from_millis(500))
        );
    }
}
