//! Where and how to send OTLP, resolved the way every OpenTelemetry SDK does it: the standard
//! `OTEL_*` variables win over the configuration (file and `FLOWTEL_*` variables), and the
//! signal-specific variable wins over the generic one.
//!
//! Endpoints: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (and `export.otlp.metrics_endpoint`) are used
//! as given; `OTEL_EXPORTER_OTLP_ENDPOINT` (and `export.otlp.endpoint`) are a base to which HTTP
//! adds `/v1/metrics`. OTLP is on as soon as any endpoint is set.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HistogramFormat;
use crate::export::Temporality;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// The `[export.otlp]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSection {
    /// Base endpoint, like OTEL_EXPORTER_OTLP_ENDPOINT (HTTP adds /v1/metrics).
    pub endpoint: Option<String>,
    /// Full metrics URL, like OTEL_EXPORTER_OTLP_METRICS_ENDPOINT.
    pub metrics_endpoint: Option<String>,
    /// "grpc" (default) or "http/protobuf".
    pub protocol: Option<Protocol>,
    /// Extra request headers (authentication tokens, tenant ids).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Milliseconds an export may take (default 10000).
    pub timeout_ms: Option<u64>,
    /// "gzip" (default) or "none".
    pub compression: Option<String>,
    /// PEM file of a CA to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Plain-text gRPC for an endpoint given without a scheme.
    pub insecure: Option<bool>,
}

/// Everything the OTLP client needs, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full URL requests go to.
    pub url: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{name}={value} is not a supported OTLP protocol: use grpc or http/protobuf")]
    Protocol { name: String, value: String },
    #[error("{name}={value} is not a supported compression: use gzip or none")]
    Compression { name: String, value: String },
    #[error("{name}={value} is not a number of milliseconds")]
    Millis { name: String, value: String },
    #[error("{name}={value} must be cumulative, delta or lowmemory")]
    Temporality { name: String, value: String },
    #[error("{name}={value} must be base2_exponential_bucket_histogram or explicit_bucket_histogram")]
    Histograms { name: String, value: String },
    // the text is not shown: it may be a token given without its key
    #[error("{name}: header {position} has no '=' (expected key1=value1,key2=value2; the text is not shown, it may be a secret)")]
    Header { name: String, position: usize },
    #[error("{name}={value} is below the 1000 ms minimum export interval")]
    Interval { name: String, value: String },
}

/// Reads `name` from the environment given as a lookup; empty values count as unset.
fn var(env: impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    env(name)
        .filter(|v| !v.trim().is_empty())
        .map(|v| (name.to_string(), v.trim().to_string()))
}

fn first(env: impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| var(&env, n))
}

fn parse_protocol(name: &str, value: &str) -> Result<Protocol, SettingsError> {
    match value {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err(SettingsError::Protocol {
            name: name.into(),
            value: value.into(),
        }),
    }
}

fn parse_gzip(name: &str, value: &str) -> Result<bool, SettingsError> {
    match value {
        "gzip" => Ok(true),
        "none" => Ok(false),
        _ => Err(SettingsError::Compression {
            name: name.into(),
            value: value.into(),
        }),
    }
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, SettingsError> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| SettingsError::Millis {
            name: name.into(),
            value: value.into(),
        })
}

/// `k1=v1,k2=v2`, each part percent-decoded, as the OTLP exporter specification says.
fn parse_headers(name: &str, value: &str) -> Result<Vec<(String, String)>, SettingsError> {
    value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, pair)| {
            let (k, v) = pair.split_once('=').ok_or_else(|| SettingsError::Header {
                name: name.into(),
                position: i + 1,
            })?;
            Ok((percent_decode(k.trim()), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Adds a scheme to a bare `host:port`: http when insecure, https otherwise (as the SDKs do).
fn with_scheme(endpoint: &str, insecure: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// Resolves the OTLP settings; `None` when no endpoint is configured anywhere (OTLP off).
pub fn resolve(
    section: &OtlpSection,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpSettings>, SettingsError> {
    let protocol = match first(
        &env,
        &["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"],
    ) {
        Some((name, value)) => parse_protocol(&name, &value)?,
        None => section.protocol.unwrap_or_default(),
    };
    let insecure = match first(
        &env,
        &["OTEL_EXPORTER_OTLP_METRICS_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"],
    ) {
        Some((_, value)) => value.eq_ignore_ascii_case("true"),
        None => section.insecure.unwrap_or(false),
    };
    let base_to_url = |base: &str| match protocol {
        Protocol::Grpc => with_scheme(base, insecure),
        Protocol::HttpProtobuf => format!("{}/v1/metrics", with_scheme(base, insecure).trim_end_matches('/')),
    };
    let url = if let Some((_, url)) = var(&env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        with_scheme(&url, insecure)
    } else if let Some((_, base)) = var(&env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
        base_to_url(&base)
    } else if let Some(url) = section.metrics_endpoint.as_deref().filter(|s| !s.trim().is_empty()) {
        with_scheme(url, insecure)
    } else if let Some(base) = section.endpoint.as_deref().filter(|s| !s.trim().is_empty()) {
        base_to_url(base)
    } else {
        return Ok(None);
    };
    let headers = match first(
        &env,
        &["OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
    ) {
        Some((name, value)) => parse_headers(&name, &value)?,
        None => section.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let timeout = match first(
        &env,
        &["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
    ) {
        Some((name, value)) => parse_millis(&name, &value)?,
        None => section.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
    };
    let gzip = match first(
        &env,
        &[
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    ) {
        Some((name, value)) => parse_gzip(&name, &value)?,
        None => match section.compression.as_deref() {
            Some(value) => parse_gzip("export.otlp.compression", value)?,
            // gzip by default, unlike the SDKs: a 1000-pair export is 2.6 MB plain, 50 KB gzipped
            None => true,
        },
    };
    let path = |names: &[&str], configured: &Option<PathBuf>| {
        first(&env, names)
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| configured.clone())
    };
    Ok(Some(OtlpSettings {
        url,
        protocol,
        headers,
        timeout,
        gzip,
        ca_file: path(
            &[
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ],
            &section.ca_file,
        ),
        client_cert_file: path(
            &[
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            ],
            &section.client_cert_file,
        ),
        client_key_file: path(
            &["OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"],
            &section.client_key_file,
        ),
    }))
}

/// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE over the configured temporality.
/// `lowmemory` means delta for counters and histograms, which is all flowtel sends as sums.
pub fn resolve_temporality(
    configured: Temporality,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Temporality, SettingsError> {
    match var(&env, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        None => Ok(configured),
        Some((name, value)) => match value.to_ascii_lowercase().as_str() {
            "cumulative" => Ok(Temporality::Cumulative),
            "delta" | "lowmemory" => Ok(Temporality::Delta),
            _ => Err(SettingsError::Temporality { name, value }),
        },
    }
}

/// OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION over `export.histograms`.
pub fn resolve_histograms(
    configured: HistogramFormat,
    env: impl Fn(&str) -> Option<String>,
) -> Result<HistogramFormat, SettingsError> {
    match var(&env, "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION") {
        None => Ok(configured),
        Some((name, value)) => match value.to_ascii_lowercase().as_str() {
            "base2_exponential_bucket_histogram" => Ok(HistogramFormat::Exponential),
            "explicit_bucket_histogram" => Ok(HistogramFormat::Explicit),
            _ => Err(SettingsError::Histograms { name, value }),
        },
    }
}

/// OTEL_METRIC_EXPORT_INTERVAL (milliseconds) over the configured interval.
pub fn resolve_interval(configured: Duration, env: impl Fn(&str) -> Option<String>) -> Result<Duration, SettingsError> {
    match var(&env, "OTEL_METRIC_EXPORT_INTERVAL") {
        None => Ok(configured),
        Some((name, value)) => {
            let interval = parse_millis(&name, &value)?;
            if interval < Duration::from_secs(1) {
                return Err(SettingsError::Interval { name, value });
            }
            Ok(interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_endpoint_means_no_otlp() {
        assert_eq!(resolve(&OtlpSection::default(), env(&[])), Ok(None));
    }

    #[test]
    fn one_env_var_turns_otlp_on_with_sdk_defaults() {
        let s = resolve(
            &OtlpSection::default(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]),
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.url, "http://collector:4317");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(s.gzip, "gzip unless told otherwise");
    }

    #[test]
    fn http_appends_the_signal_path_to_the_generic_endpoint_only() {
        let generic = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            resolve(&OtlpSection::default(), generic)
                .expect("valid")
                .expect("on")
                .url,
            "http://c:4318/v1/metrics"
        );
        let specific = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9999/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            resolve(&OtlpSection::default(), specific)
                .expect("valid")
                .expect("on")
                .url,
            "http://m:9999/custom"
        );
    }

    #[test]
    fn env_vars_override_the_config_file() {
        let section = OtlpSection {
            endpoint: Some("http://from-file:4317".into()),
            protocol: Some(Protocol::Grpc),
            headers: [("x-file".to_string(), "1".to_string())].into(),
            timeout_ms: Some(2000),
            compression: Some("none".into()),
            ..Default::default()
        };
        let from_file = resolve(&section, env(&[])).expect("valid").expect("on");
        assert_eq!(
            (from_file.url.as_str(), from_file.timeout),
            ("http://from-file:4317", Duration::from_secs(2))
        );
        assert_eq!(from_file.headers, vec![("x-file".to_string(), "1".to_string())]);
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://from-env"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,x-team=net"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
        ]);
        let s = resolve(&section, vars).expect("valid").expect("on");
        assert_eq!(s.url, "https://from-env/v1/metrics");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            s.headers,
            vec![("api-key".into(), "s=cret".into()), ("x-team".into(), "net".into())]
        );
        assert_eq!(s.timeout, Duration::from_millis(500));
        assert!(s.gzip);
    }

    #[test]
    fn bare_endpoints_get_a_scheme() {
        let secure = resolve(
            &OtlpSection::default(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
        );
        assert_eq!(secure.expect("valid").expect("on").url, "https://collector:4317");
        let plain = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert_eq!(
            resolve(&OtlpSection::default(), plain).expect("valid").expect("on").url,
            "http://collector:4317"
        );
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let bad = |vars: &[(&str, &str)]| {
            resolve(&OtlpSection::default(), env(vars))
                .expect_err("rejected")
                .to_string()
        };
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert!(bad(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"));
        assert!(bad(&[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).contains("OTEL_EXPORTER_OTLP_TIMEOUT"));
        assert!(bad(&[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).contains("gzip or none"));
        let header = bad(&[base, ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a,Bearer-s3cret")]);
        assert!(
            header.contains("OTEL_EXPORTER_OTLP_HEADERS: header 2 has no '='"),
            "{header}"
        );
        assert!(
            !header.contains("s3cret"),
            "a malformed header may be a bare token: {header}"
        );
    }

    #[test]
    fn histogram_aggregation_from_the_environment() {
        assert_eq!(
            resolve_histograms(
                HistogramFormat::Exponential,
                env(&[(
                    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                    "explicit_bucket_histogram"
                )])
            )
            .expect("valid"),
            HistogramFormat::Explicit
        );
        assert_eq!(
            resolve_histograms(HistogramFormat::Explicit, env(&[])).expect("unset"),
            HistogramFormat::Explicit
        );
        let err = resolve_histograms(
            HistogramFormat::Exponential,
            env(&[("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "sparse")]),
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("explicit_bucket_histogram"), "{err}");
    }

    #[test]
    fn temporality_and_interval_from_the_environment() {
        let pref = |v: &str| {
            resolve_temporality(
                Temporality::Cumulative,
                env(&[("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", v)]),
            )
        };
        assert_eq!(pref("Delta"), Ok(Temporality::Delta));
        assert_eq!(pref("lowmemory"), Ok(Temporality::Delta));
        assert_eq!(pref("cumulative"), Ok(Temporality::Cumulative));
        assert!(pref("sometimes").is_err());
        assert_eq!(
            resolve_temporality(Temporality::Delta, env(&[])),
            Ok(Temporality::Delta)
        );
        let interval = |v: &str| resolve_interval(Duration::from_secs(30), env(&[("OTEL_METRIC_EXPORT_INTERVAL", v)]));
        assert_eq!(interval("5000"), Ok(Duration::from_secs(5)));
        assert!(interval("10").is_err(), "below 1 s");
        assert_eq!(
            resolve_interval(Duration::from_secs(30), env(&[])),
            Ok(Duration::from_secs(30))
        );
    }
}
