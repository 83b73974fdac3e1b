//! Configuration in layers: built-in defaults, then the TOML file given with --config, then
//! `FLOWTEL_*` environment variables (`FLOWTEL_SAMPLER__POLL_INTERVAL_MS=500`). Unknown keys are
//! errors: a typo must not silently fall back to a default.
use crate::enrich::kubernetes::KubernetesSection;
use crate::export::redact::PeerAddresses;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::agent::probes::ProbesSection;
use crate::enrich::{MonitorSection, ResourcesSection};
use crate::export::otlp::settings::{
    resolve, resolve_histograms, resolve_interval, resolve_temporality, OtlpSection, SettingsError,
};
use crate::export::otlp::HistogramFormat;
use crate::export::prometheus::PrometheusSection;
use crate::export::select::{DEFAULT_FAILURE_WEIGHT, DEFAULT_RETRANSMIT_WEIGHT, DEFAULT_TIMEOUT_WEIGHT};
use crate::export::Temporality;
use crate::export::{ExportConfig, RankBy, SelectionConfig, DEFAULT_STALE_AFTER, DEFAULT_TOP_K};
use crate::flows::{FlowTableConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PAIRS};
use crate::health::HealthThresholds;
use crate::sampler::{SamplerConfig, DEFAULT_LISTENER_MAP_CAPACITY, DEFAULT_PAIR_MAP_CAPACITY};

const ENV_PREFIX: &str = "FLOWTEL_";
/// FLOWTEL_ variables that are not configuration keys.
const ENV_NOT_CONFIG: &[&str] = &["config", "log"];

pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;
/// 100k live sockets cost about 150 ms of kernel time per walk: every 10 s, 1.5% of a core.
pub const DEFAULT_WALK_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_SUMMARY_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_EXPORT_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (check the --config path or FLOWTEL_CONFIG)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sampler: SamplerSection,
    pub flows: FlowsSection,
    pub run: RunSection,
    pub export: ExportSection,
    pub health: HealthSection,
    /// `[resources]`: networks, this host's placement, service lists.
    pub resources: ResourcesSection,
    /// `[[monitors]]`: named local/remote resource sets with rolled-up metrics and health.
    pub monitors: Vec<MonitorSection>,
    /// `[probes]`: /healthz and /readyz for orchestrators.
    pub probes: ProbesSection,
    /// `[kubernetes]`: pod, workload and Service names for both ends.
    pub kubernetes: KubernetesSection,
    /// `[nat]`: reversing DNAT through conntrack.
    pub nat: NatSection,
    /// `[dns]`: peers' DNS names, from the answers this host's sockets receive.
    pub dns: DnsSection,
}

/// `[dns]`: the name each peer address was resolved from, learned passively from the DNS
/// answers (UDP and TCP port 53) that the cgroup's sockets receive. See docs/dns.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Capture DNS answers and label pairs with `flowtel.peer.dns.name`.
    pub enabled: bool,
    /// An answer's TTL is raised to at least this: applications keep using an address for a
    /// while after its record expires.
    pub min_ttl_secs: u64,
    /// ...and cut to at most this.
    pub max_ttl_secs: u64,
    /// Addresses the name cache holds; when full, the names closest to expiry make room,
    /// counted as dropped (`dns_cache_full`).
    pub max_entries: usize,
    /// The kernel's ring buffer for answers between two polls: a power of two and a multiple
    /// of the page size. Answers arriving at a full ring are counted (`dns_ring_full`).
    pub ring_buffer_bytes: u32,
    /// `flowtel top` shows a peer's name instead of its address when known (the `n` key
    /// toggles it).
    pub top_shows_names: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        use crate::enrich::dns::cache::{DEFAULT_MAX_ENTRIES, DEFAULT_MAX_TTL_SECS, DEFAULT_MIN_TTL_SECS};
        Self {
            enabled: true,
            min_ttl_secs: DEFAULT_MIN_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            max_entries: DEFAULT_MAX_ENTRIES,
            ring_buffer_bytes: crate::sampler::DEFAULT_DNS_RING_BYTES,
            top_shows_names: true,
        }
    }
}

/// `[nat]`: client connections to these destinations are looked up in the kernel's conntrack
/// table and attributed to the real peer behind the DNAT. Kubernetes ClusterIPs are added
/// automatically when the API server is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatSection {
    /// CIDRs that may be DNATed, such as the cluster's service range ("10.96.0.0/12"). Listing
    /// any turns NAT reversal on: then every DNATed connection is reversed in the kernel as it
    /// opens, whatever its destination, and connections to these that predate the agent are
    /// looked up in conntrack.
    pub destinations: Vec<ipnet::IpNet>,
    /// Slots for live DNATed client connections in the kernel (rounded up to a power of two,
    /// 32 bytes each, allocated while NAT reversal is on). Keep it at four times the most such
    /// connections open at once: a connection that finds no free slot near its own stays under
    /// the address it connected to, counted as dropped (`nat_unstored`).
    pub peer_map_capacity: u32,
}

impl Default for NatSection {
    fn default() -> Self {
        Self {
            destinations: Vec::new(),
            peer_map_capacity: crate::sampler::DEFAULT_NAT_PEER_MAP_CAPACITY,
        }
    }
}

/// `[health]`: see docs/health.md for the algorithm and how to tune each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub enabled: bool,
    /// Seconds between evaluations.
    pub interval_secs: u64,
    /// `[health.thresholds]`: every knob of the rules.
    pub thresholds: HealthThresholds,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
            thresholds: HealthThresholds::default(),
        }
    }
}

impl HealthSection {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Seconds between exports (minimum 1).
    pub interval_secs: u64,
    /// Flow pairs exported with series of their own; the rest share one overflow series.
    pub top_k: usize,
    /// Seconds an idle pair (no traffic, no live connection) keeps its series.
    pub stale_after_secs: u64,
    /// What ranks pairs for the top K: "loss" (weighted retransmits, timeouts, failures; then
    /// bytes) or "bytes".
    pub rank_by: RankBy,
    /// Weights of the loss score: per retransmitted segment, per timeout, per failed connect.
    pub retransmit_weight: u64,
    pub timeout_weight: u64,
    pub failure_weight: u64,
    /// "cumulative" or "delta".
    pub temporality: Temporality,
    /// OTLP histograms: "exponential" (exact, compact) or "explicit" (the /metrics bounds, for
    /// pipelines that drop exponential histograms).
    pub histograms: HistogramFormat,
    /// Append OTLP JSON lines to this file; unset: no file output.
    pub file_path: Option<PathBuf>,
    /// OTLP destination; OTEL_EXPORTER_OTLP_* variables override it.
    pub otlp: OtlpSection,
    /// The opt-in Prometheus /metrics endpoint.
    pub prometheus: PrometheusSection,
    /// Export peer addresses as keyed hashes (`hmac:...`) instead of addresses.
    pub redact_peer_addresses: bool,
    /// The hashing key, at least 16 characters; the same on hosts whose flows should join.
    pub redact_key: Option<String>,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self {
            interval_secs: DEFAULT_EXPORT_INTERVAL_SECS,
            top_k: DEFAULT_TOP_K,
            stale_after_secs: DEFAULT_STALE_AFTER.as_secs(),
            rank_by: RankBy::Loss,
            retransmit_weight: DEFAULT_RETRANSMIT_WEIGHT,
            timeout_weight: DEFAULT_TIMEOUT_WEIGHT,
            failure_weight: DEFAULT_FAILURE_WEIGHT,
            temporality: Temporality::Cumulative,
            histograms: HistogramFormat::Exponential,
            file_path: None,
            redact_peer_addresses: false,
            redact_key: None,
            otlp: OtlpSection::default(),
            prometheus: PrometheusSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerSection {
    /// cgroup-v2 directory to attach to; unset: the root of the hierarchy, detected.
    pub cgroup_path: Option<PathBuf>,
    /// Milliseconds between polls of the kernel counters.
    pub poll_interval_ms: u64,
    /// Distinct flow pairs per poll interval before folds go to the overflow bucket.
    pub pair_map_capacity: u32,
    /// Listening sockets remembered per walk.
    pub listener_map_capacity: u32,
    /// RTT sample on every ACK instead of at close and per walk (about 3x the BPF cost).
    pub per_ack_rtt: bool,
    /// Milliseconds between walks of the live sockets (long-lived byte counts, RTT samples,
    /// active gauges); 0: every poll. Closed connections are counted every poll regardless.
    pub walk_interval_ms: u64,
}

impl Default for SamplerSection {
    fn default() -> Self {
        Self {
            cgroup_path: None,
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            pair_map_capacity: DEFAULT_PAIR_MAP_CAPACITY,
            listener_map_capacity: DEFAULT_LISTENER_MAP_CAPACITY,
            per_ack_rtt: false,
            walk_interval_ms: DEFAULT_WALK_INTERVAL_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsSection {
    /// Seconds without traffic or a live connection before a pair is dropped.
    pub idle_timeout_secs: u64,
    /// Pairs kept in memory; beyond it new pairs fold into the overflow bucket.
    pub max_pairs: usize,
}

impl Default for FlowsSection {
    fn default() -> Self {
        Self {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT.as_secs(),
            max_pairs: DEFAULT_MAX_PAIRS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Seconds between the summaries `flowtel run` logs.
    pub summary_interval_secs: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            summary_interval_secs: DEFAULT_SUMMARY_INTERVAL_SECS,
        }
    }
}

impl Config {
    /// Defaults, then `file`, then the `FLOWTEL_*` variables of `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment skips a missing file silently: check that it can be read first
            std::fs::File::open(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // The same mapping as figment's Env provider (FLOWTEL_A__B=v sets a.b, values parsed the
        // same way), over an explicit list so that loading stays testable without a process env.
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if ENV_NOT_CONFIG.contains(&key.as_str()) || key.is_empty() {
                continue;
            }
            let value: Value = if raw.contains('\\') && !raw.is_ascii() {
                // figment 0.10's unescaping indexes bytes by character count and panics on
                // non-ASCII text before a backslash (found by integration/fuzz.rs): such a
                // value is taken as the plain string it is
                Value::from(raw)
            } else {
                raw.parse()
                    .unwrap_or_else(|never: std::convert::Infallible| match never {})
            };
            figment = figment.merge(EnvVar { name, key, value });
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Invalid(one_line(&e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.sampler;
        if s.poll_interval_ms < 100 {
            return Err(ConfigError::Invalid(format!(
                "sampler.poll_interval_ms = {} is below the minimum of 100",
                s.poll_interval_ms
            )));
        }
        for (name, value) in [
            ("sampler.pair_map_capacity", s.pair_map_capacity),
            ("sampler.listener_map_capacity", s.listener_map_capacity),
            ("nat.peer_map_capacity", self.nat.peer_map_capacity),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.nat.peer_map_capacity > crate::sampler::MAX_NAT_PEER_MAP_CAPACITY {
            return Err(ConfigError::Invalid(format!(
                "nat.peer_map_capacity = {} is above the maximum of {} slots (512 MiB)",
                self.nat.peer_map_capacity,
                crate::sampler::MAX_NAT_PEER_MAP_CAPACITY
            )));
        }
        if self.flows.max_pairs == 0 {
            return Err(ConfigError::Invalid("flows.max_pairs must be at least 1".into()));
        }
        if self.export.interval_secs == 0 {
            return Err(ConfigError::Invalid("export.interval_secs must be at least 1".into()));
        }
        if self.export.top_k == 0 {
            return Err(ConfigError::Invalid("export.top_k must be at least 1".into()));
        }
        let (h, t) = (&self.health, &self.health.thresholds);
        if h.interval_secs == 0 || t.enter_intervals == 0 || t.exit_intervals == 0 || t.baseline_window == 0 {
            return Err(ConfigError::Invalid(
                "health.interval_secs, enter_intervals, exit_intervals and baseline_window must be at least 1".into(),
            ));
        }
        let dns = &self.dns;
        if dns.enabled {
            let ring = dns.ring_buffer_bytes;
            let page = crate::sampler::page_size();
            if !ring.is_power_of_two() || ring < page {
                return Err(ConfigError::Invalid(format!(
                    "dns.ring_buffer_bytes is {ring}; use a power of two of at least the page size ({page}), such as 1048576"
                )));
            }
            if dns.max_entries == 0 {
                return Err(ConfigError::Invalid("dns.max_entries must be at least 1".into()));
            }
            if dns.min_ttl_secs > dns.max_ttl_secs {
                return Err(ConfigError::Invalid(format!(
                    "dns.min_ttl_secs ({}) is above dns.max_ttl_secs ({}); the floor must not exceed the ceiling",
                    dns.min_ttl_secs, dns.max_ttl_secs
                )));
            }
        }
        if self.run.summary_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "run.summary_interval_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            cgroup_path: self.sampler.cgroup_path.clone(),
            pair_map_capacity: self.sampler.pair_map_capacity,
            listener_map_capacity: self.sampler.listener_map_capacity,
            per_ack_rtt: self.sampler.per_ack_rtt,
            walk_interval: Duration::from_millis(self.sampler.walk_interval_ms),
            // `flowtel run` also turns it on when it watches the Kubernetes API (ClusterIPs)
            nat: !self.nat.destinations.is_empty(),
            nat_destinations: self.nat.destinations.clone(),
            nat_peer_map_capacity: self.nat.peer_map_capacity,
            dns: self.dns.enabled,
            dns_ring_bytes: self.dns.ring_buffer_bytes,
        }
    }

    pub fn dns_cache_config(&self) -> crate::enrich::dns::DnsCacheConfig {
        crate::enrich::dns::DnsCacheConfig {
            min_ttl: Duration::from_secs(self.dns.min_ttl_secs),
            max_ttl: Duration::from_secs(self.dns.max_ttl_secs),
            max_entries: self.dns.max_entries,
        }
    }

    /// For the short, interactive views (`snapshot`, `top`): live sockets current at every poll.
    pub fn sampler_config_walking_every_poll(&self) -> SamplerConfig {
        SamplerConfig {
            walk_interval: Duration::ZERO,
            ..self.sampler_config()
        }
    }

    pub fn flow_table_config(&self) -> FlowTableConfig {
        FlowTableConfig {
            idle_timeout: Duration::from_secs(self.flows.idle_timeout_secs),
            max_pairs: self.flows.max_pairs,
        }
    }

    pub fn selection_config(&self) -> SelectionConfig {
        SelectionConfig {
            top_k: self.export.top_k,
            stale_after: Duration::from_secs(self.export.stale_after_secs),
            rank_by: self.export.rank_by,
            retransmit_weight: self.export.retransmit_weight,
            timeout_weight: self.export.timeout_weight,
            failure_weight: self.export.failure_weight,
        }
    }

    /// The export settings, with the standard OTEL_* variables (looked up through `env`) over
    /// the configuration.
    pub fn export_config(&self, env: impl Fn(&str) -> Option<String>) -> Result<ExportConfig, ConfigError> {
        let invalid = |e: SettingsError| ConfigError::Invalid(e.to_string());
        Ok(ExportConfig {
            selection: self.selection_config(),
            temporality: resolve_temporality(self.export.temporality, &env).map_err(invalid)?,
            histograms: resolve_histograms(self.export.histograms, &env).map_err(invalid)?,
            interval: resolve_interval(Duration::from_secs(self.export.interval_secs), &env).map_err(invalid)?,
            file_path: self.export.file_path.clone(),
            otlp: resolve(&self.export.otlp, &env).map_err(invalid)?,
            prometheus: self.export.prometheus.enabled.then(|| self.export.prometheus.clone()),
            peer_addresses: PeerAddresses::new(self.export.redact_peer_addresses, self.export.redact_key.as_deref())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        })
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.sampler.poll_interval_ms)
    }
}

/// One `FLOWTEL_*` variable as a figment layer, named so that errors point at the variable.
struct EnvVar {
    name: String,
    key: String,
    value: Value,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

/// Keys whose values are secrets: an error about them names the key and the type it found,
/// never the value.
const SECRET_KEYS: [&str; 2] = ["headers", "redact_key"];

fn one_line(e: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    e.clone()
        .into_iter()
        .map(|mut err| {
            if err.path.iter().any(|p| SECRET_KEYS.contains(&p.as_str())) {
                let hidden = |actual: &Actual| {
                    let shape = match actual {
                        Actual::Str(_) => "a string",
                        Actual::Bool(_) => "a boolean",
                        Actual::Signed(_) | Actual::Unsigned(_) | Actual::Float(_) => "a number",
                        Actual::Seq => "a list",
                        Actual::Map => "a table",
                        _ => "another type",
                    };
                    Actual::Other(format!("{shape} (value not shown: it is a secret)"))
                };
                err.kind = match err.kind {
                    Kind::InvalidType(actual, expected) => Kind::InvalidType(hidden(&actual), expected),
                    Kind::InvalidValue(actual, expected) => Kind::InvalidValue(hidden(&actual), expected),
                    other => other,
                };
            }
            err.to_string().lines().collect::<Vec<_>>().join("; ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write temp file");
        f
    }

    #[test]
    fn dns_limits_are_checked_with_one_line_naming_the_key() {
        let err = |text: &str| {
            Config::load(Some(file(text).path()), vars(&[]))
                .expect_err("refused")
                .to_string()
        };
        let ring = err("[dns]\nring_buffer_bytes = 1000\n");
        assert!(
            ring.contains("dns.ring_buffer_bytes is 1000") && ring.contains("power of two"),
            "{ring}"
        );
        let ttl = err("[dns]\nmin_ttl_secs = 600\nmax_ttl_secs = 60\n");
        assert!(
            ttl.contains("dns.min_ttl_secs (600) is above dns.max_ttl_secs (60)"),
            "{ttl}"
        );
        assert!(err("[dns]\nmax_entries = 0\n").contains("dns.max_entries must be at least 1"));
        // off: its limits are not looked at
        let off = Config::load(
            Some(file("[dns]\nenabled = false\nring_buffer_bytes = 1000\n").path()),
            vars(&[]),
        )
        .expect("loads");
        assert!(!off.sampler_config().dns);
        let cache = Config::default().dns_cache_config();
        assert_eq!(cache.min_ttl, Duration::from_secs(60));
        assert_eq!(cache.max_entries, 16_384);
    }

    #[test]
    fn defaults_without_file_or_env() {
        let config = Config::load(None, vars(&[])).expect("defaults load");
        assert_eq!(config, Config::default());
        assert_eq!(config.poll_interval(), Duration::from_secs(1));
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let f = file("[sampler]\npoll_interval_ms = 500\npair_map_capacity = 10\n[flows]\nmax_pairs = 7\n");
        let env = vars(&[
            ("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "250"),
            ("FLOWTEL_CONFIG", "ignored"),
            ("OTHER", "x"),
        ]);
        let config = Config::load(Some(f.path()), env).expect("layers load");
        assert_eq!(config.sampler.poll_interval_ms, 250);
        assert_eq!(config.sampler.pair_map_capacity, 10);
        assert_eq!(config.flows.max_pairs, 7);
        assert_eq!(config.run, RunSection::default());
    }

    #[test]
    fn the_documented_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flowtel.toml");
        let config = Config::load(Some(&path), vars(&[])).expect("config/flowtel.toml loads");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn a_nat_peer_map_of_no_entries_is_refused() {
        let err = Config::load(None, vars(&[("FLOWTEL_NAT__PEER_MAP_CAPACITY", "0")])).expect_err("zero entries");
        assert_eq!(err.to_string().lines().count(), 1);
        assert!(
            err.to_string().contains("nat.peer_map_capacity must be at least 1"),
            "{err}"
        );
        let config = Config::load(None, vars(&[("FLOWTEL_NAT__PEER_MAP_CAPACITY", "64")])).expect("a capacity");
        assert_eq!(config.sampler_config().nat_peer_map_capacity, 64);
        let err = Config::load(None, vars(&[("FLOWTEL_NAT__PEER_MAP_CAPACITY", "16777217")]))
            .expect_err("more than the most slots");
        assert_eq!(err.to_string().lines().count(), 1);
        assert!(err.to_string().contains("above the maximum of 16777216 slots"), "{err}");
    }

    #[test]
    fn non_ascii_text_before_a_backslash_is_a_plain_value_not_a_panic() {
        let config =
            Config::load(None, vars(&[("FLOWTEL_EXPORT__FILE_PATH", "/tmp/\"Ⱥ\\x\"")])).expect("a path is any string");
        assert_eq!(config.export.file_path.as_deref(), Some(Path::new("/tmp/\"Ⱥ\\x\"")));
        let err =
            Config::load(None, vars(&[("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "\"Ⱥ\\\"")])).expect_err("not a number");
        assert!(err.to_string().contains("poll_interval_ms"), "{err}");
    }

    #[test]
    fn errors_about_secrets_never_show_the_value() {
        let f = file("[export.otlp]\nheaders = \"Bearer s3cret-token\"\n");
        let err = Config::load(Some(f.path()), vars(&[]))
            .expect_err("not a table")
            .to_string();
        assert!(err.contains("headers") && err.contains("a string"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Config::load(
            None,
            vars(&[("FLOWTEL_EXPORT__REDACT_KEY", "[\"s3cret-key-material\"]")]),
        )
        .expect_err("not a string")
        .to_string();
        assert!(err.contains("redact_key"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn unknown_keys_are_one_line_errors() {
        let f = file("[sampler]\npoll_intervl_ms = 5\n");
        let err = Config::load(Some(f.path()), vars(&[]))
            .expect_err("typo rejected")
            .to_string();
        assert!(err.contains("poll_intervl_ms"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Config::load(None, vars(&[("FLOWTEL_SAMPLER__NOPE", "1")]))
            .expect_err("unknown env key")
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_and_missing_files_name_the_problem() {
        let err = Config::load(None, vars(&[("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "fast")])).expect_err("not a number");
        assert!(err.to_string().contains("poll_interval_ms"), "{err}");
        let err = Config::load(None, vars(&[("FLOWTEL_SAMPLER__POLL_INTERVAL_MS", "5")])).expect_err("too small");
        assert!(err.to_string().contains("minimum of 100"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/flowtel.toml")), vars(&[])).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/flowtel.toml"), "{err}");
    }
}

#[cfg(test)]
mod resources_tests {
    use std::io::Write;

    use super::*;
    use crate::enrich::monitors::{LocalSelector, RemoteSelector};

    #[test]
    fn networks_and_monitors_parse_from_toml() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(
            br#"
[resources.host]
zone = "zone-a"
region = "r1"

[resources.networks]
"10.0.1.0/24" = { name = "app-a", vpc = "vpc-1", zone = "zone-a", region = "r1" }
"2001:db8:1::/64" = { name = "app-a6", zone = "zone-a" }

[[monitors]]
name = "app-a-out"
local = [{ subnet = "app-a" }, { cidr = "10.0.0.0/8" }]
remote = ["everywhere", { service = "S3" }]
"#,
        )
        .expect("write");
        let config = Config::load(Some(f.path()), Vec::new()).expect("loads");
        assert_eq!(config.resources.networks.len(), 2);
        assert_eq!(config.resources.networks["10.0.1.0/24"].vpc.as_deref(), Some("vpc-1"));
        assert_eq!(config.resources.host.zone.as_deref(), Some("zone-a"));
        let m = &config.monitors[0];
        assert_eq!(
            m.local,
            vec![
                LocalSelector::Subnet("app-a".into()),
                LocalSelector::Cidr("10.0.0.0/8".into())
            ]
        );
        assert_eq!(
            m.remote,
            vec![RemoteSelector::Everywhere, RemoteSelector::Service("S3".into())]
        );
    }

    #[test]
    fn a_misspelt_selector_is_a_one_line_error() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(b"[[monitors]]\nname = \"m\"\nlocal = [{ subnett = \"a\" }]\nremote = [\"everywhere\"]\n")
            .expect("write");
        let err = Config::load(Some(f.path()), Vec::new())
            .expect_err("rejected")
            .to_string();
        assert!(err.contains("subnett"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::enrich::{Category, Enricher};
    use crate::flows::{FlowKey, Role};

    /// config/resources-example.toml loads, its monitors compile, and the categories its comments
    /// promise are what flowtel decides.
    #[test]
    fn the_worked_resources_example_holds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/resources-example.toml");
        let mut config = Config::load(Some(&path), Vec::new()).expect("the example loads");
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("ip-ranges.json");
        std::fs::write(
            &list,
            r#"{"prefixes":[
              {"ip_prefix":"52.218.0.0/17","region":"eu-west-1","service":"AMAZON"},
              {"ip_prefix":"52.218.0.0/17","region":"eu-west-1","service":"S3"},
              {"ip_prefix":"52.94.24.0/23","region":"eu-west-1","service":"DYNAMODB"}],
              "ipv6_prefixes":[]}"#,
        )
        .expect("write list");
        config.resources.service_lists[0].path = list;
        let enricher = Enricher::new(&config.resources, None, &config.monitors).expect("monitors compile");
        assert_eq!(enricher.monitors().len(), 4);
        let app = "10.20.10.5";
        let category = |peer: &str| {
            enricher
                .classify(&FlowKey {
                    local: app.parse().expect("ip"),
                    remote: peer.parse().expect("ip"),
                    service_port: 443,
                    role: Role::Client,
                })
                .category
        };
        assert_eq!(category("10.20.20.7"), Category::IntraZone);
        assert_eq!(category("10.20.21.7"), Category::InterZone);
        assert_eq!(category("10.30.4.2"), Category::InterVpc);
        assert_eq!(category("10.40.0.9"), Category::InterRegion);
        assert_eq!(category("52.218.1.1"), Category::Service);
        assert_eq!(category("140.82.112.3"), Category::Internet);
        assert_eq!(category("192.168.9.9"), Category::Unclassified);
    }
}
