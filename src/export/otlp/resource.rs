//! The OTLP resource: `service.name` (default `flowtel`, `OTEL_SERVICE_NAME` wins),
//! `service.version`, `service.instance.id` (the host name), `host.name`, `host.id` (the machine id), `os.type`, the host's
//! `cloud.provider`, `cloud.availability_zone`, `cloud.region` and `cloud.account.id` where known
//! (`[resources.host]` or detected), and anything in `OTEL_RESOURCE_ATTRIBUTES`, which overrides
//! the detected values.
use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
use opentelemetry_sdk::Resource;

use crate::enrich::HostPlacement;

pub const DEFAULT_SERVICE_NAME: &str = "flowtel";

/// Builds the resource from the host, its placement and the process environment.
pub fn detect(placement: &HostPlacement) -> Resource {
    let service_name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.trim().is_empty());
    build(crate::enrich::host_name(), machine_id(), placement, service_name)
}

fn build(
    host_name: Option<String>,
    host_id: Option<String>,
    placement: &HostPlacement,
    service_name: Option<String>,
) -> Resource {
    let mut defaults = vec![
        KeyValue::new("service.name", DEFAULT_SERVICE_NAME),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("os.type", "linux"),
    ];
    // one instance per host: the Collector's Prometheus exporter makes it the `instance` label
    defaults.extend(host_name.clone().map(|h| KeyValue::new("service.instance.id", h)));
    defaults.extend(host_name.map(|h| KeyValue::new("host.name", h)));
    defaults.extend(host_id.map(|h| KeyValue::new("host.id", h)));
    for (key, value) in [
        ("cloud.provider", placement.provider.map(str::to_string)),
        ("cloud.availability_zone", placement.zone.clone()),
        ("cloud.region", placement.region.clone()),
        ("cloud.account.id", placement.account.clone()),
    ] {
        defaults.extend(value.map(|v| KeyValue::new(key, v)));
    }
    let detectors: Vec<Box<dyn ResourceDetector>> = vec![Box::new(EnvResourceDetector::new())];
    let builder = Resource::builder_empty()
        .with_attributes(defaults)
        .with_detectors(&detectors);
    match service_name {
        Some(name) => builder.with_service_name(name).build(),
        None => builder.build(),
    }
}

/// The machine id, as the OpenTelemetry host detector reads it.
fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(resource: &Resource, key: &str) -> Option<String> {
        resource
            .get(&opentelemetry::Key::from(key.to_string()))
            .map(|v| v.to_string())
    }

    #[test]
    fn defaults_name_the_agent_and_the_host() {
        let r = build(
            Some("node-1".into()),
            Some("abc123".into()),
            &HostPlacement::default(),
            None,
        );
        assert_eq!(get(&r, "service.name").as_deref(), Some("flowtel"));
        assert_eq!(get(&r, "service.version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get(&r, "host.name").as_deref(), Some("node-1"));
        assert_eq!(get(&r, "host.id").as_deref(), Some("abc123"));
        assert_eq!(get(&r, "os.type").as_deref(), Some("linux"));
        assert_eq!(get(&r, "cloud.region"), None, "nothing said where the host is");
    }

    #[test]
    fn the_host_placement_goes_on_the_resource() {
        let placement = HostPlacement {
            provider: Some("aws"),
            zone: Some("us-east-1b".into()),
            region: Some("us-east-1".into()),
            account: Some("123456789012".into()),
            vpc: None,
        };
        let r = build(None, None, &placement, None);
        assert_eq!(get(&r, "cloud.provider").as_deref(), Some("aws"));
        assert_eq!(get(&r, "cloud.availability_zone").as_deref(), Some("us-east-1b"));
        assert_eq!(get(&r, "cloud.region").as_deref(), Some("us-east-1"));
        assert_eq!(get(&r, "cloud.account.id").as_deref(), Some("123456789012"));
    }

    #[test]
    fn otel_service_name_wins() {
        let r = build(None, None, &HostPlacement::default(), Some("edge-agent".into()));
        assert_eq!(get(&r, "service.name").as_deref(), Some("edge-agent"));
    }
}
