//! `[resources]`: the operator's networks, this host's placement, and the service lists, plus
//! the classification of a flow pair's two ends against them.
//!
//! Classification rules (docs/resources.md repeats them):
//! 1. The local end is placed by the longest configured network holding the local address; the
//!    host's own zone, region, VPC fill what the network does not say. Loopback is the host.
//! 2. The peer is placed by the longest configured network holding its address (a loopback or
//!    own-address peer is the host itself). Configured networks win over service lists.
//! 3. A placed peer is compared with the local end, first difference wins: regions differ ->
//!    `inter_region`; VPCs differ -> `inter_vpc`; same subnet -> `intra_zone`; zones differ ->
//!    `inter_zone`; zones equal -> `intra_zone`. Where the fields needed are unknown on either
//!    end it is `unclassified`.
//! 4. Otherwise a peer in a service list is `service`, with `flowtel.peer.service` and the
//!    list's region.
//! 5. Otherwise private and special addresses are `unclassified`, the rest `internet`.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::prefixes::PrefixTable;
use super::service_lists::{ServiceListError, ServiceListSource, ServiceTable};
use crate::flows::FlowKey;

/// `flowtel.flow.category`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    IntraZone,
    InterZone,
    InterVpc,
    InterRegion,
    Service,
    Internet,
    #[default]
    Unclassified,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::IntraZone,
        Category::InterZone,
        Category::InterVpc,
        Category::InterRegion,
        Category::Service,
        Category::Internet,
        Category::Unclassified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::IntraZone => "intra_zone",
            Category::InterZone => "inter_zone",
            Category::InterVpc => "inter_vpc",
            Category::InterRegion => "inter_region",
            Category::Service => "service",
            Category::Internet => "internet",
            Category::Unclassified => "unclassified",
        }
    }
}

impl std::str::FromStr for Category {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown category {s:?} (one of {})", all.join(", "))
        })
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[resources.networks]`: `"10.0.1.0/24" = { name = "app-a", vpc = "vpc-1", zone = "zone-a" }`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEntry {
    /// The subnet's name: `flowtel.{local,peer}.subnet`.
    pub name: String,
    pub vpc: Option<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
}

/// `[resources.host]`: where this host sits. Configured values win over detected ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    pub zone: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    pub vpc: Option<String>,
}

/// Which instance metadata service to ask for the host's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudDetect {
    /// Ask nothing (the default: no request leaves the host unless asked for).
    #[default]
    Off,
    /// AWS IMDSv2.
    Aws,
    /// Google Cloud's metadata server.
    Gcp,
    /// AWS, then Google Cloud.
    Auto,
}

/// `[resources.cloud_metadata]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudMetadataSection {
    pub detect: CloudDetect,
    /// Base URL of the metadata service.
    pub endpoint: String,
    /// Milliseconds the whole detection may take; it never fails startup.
    pub timeout_ms: u64,
}

pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_METADATA_TIMEOUT: Duration = Duration::from_millis(1000);

impl Default for CloudMetadataSection {
    fn default() -> Self {
        Self {
            detect: CloudDetect::Off,
            endpoint: DEFAULT_METADATA_ENDPOINT.to_string(),
            timeout_ms: DEFAULT_METADATA_TIMEOUT.as_millis() as u64,
        }
    }
}

/// `[resources]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesSection {
    pub host: HostSection,
    pub cloud_metadata: CloudMetadataSection,
    /// CIDR -> network; the longest prefix holding an address names it.
    pub networks: BTreeMap<String, NetworkEntry>,
    pub service_lists: Vec<ServiceListSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("resources.networks: {cidr:?} is not a CIDR prefix (write it like \"10.0.1.0/24\" or \"2001:db8::/64\")")]
    Cidr { cidr: String },
    #[error("resources.networks.{cidr:?}: {what} must not be empty")]
    Empty { cidr: String, what: &'static str },
    #[error(transparent)]
    ServiceList(#[from] ServiceListError),
}

/// Where one end of a flow sits, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Arc<str>>,
}

impl Placement {
    fn or(self, fallback: &Placement) -> Placement {
        Placement {
            subnet: self.subnet.or_else(|| fallback.subnet.clone()),
            vpc: self.vpc.or_else(|| fallback.vpc.clone()),
            zone: self.zone.or_else(|| fallback.zone.clone()),
            region: self.region.or_else(|| fallback.region.clone()),
        }
    }

    /// The four `(field, value)` pairs that are known, for attributes.
    pub fn known(&self) -> impl Iterator<Item = (&'static str, &Arc<str>)> {
        [
            ("subnet", &self.subnet),
            ("vpc", &self.vpc),
            ("zone", &self.zone),
            ("region", &self.region),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

/// A flow pair in the operator's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairContext {
    pub category: Category,
    pub local: Placement,
    pub peer: Placement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_service: Option<Arc<str>>,
}

impl PairContext {
    /// What to call the peer: its subnet's or service's name.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer.subnet.as_deref().or(self.peer_service.as_deref())
    }
}

/// The host's placement and identity, configured or detected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlacement {
    /// `cloud.provider` ("aws", "gcp") when detected.
    pub provider: Option<&'static str>,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    pub vpc: Option<String>,
}

impl HostPlacement {
    /// `configured` wins field by field over `self` (detected).
    pub fn overridden_by(self, configured: &HostSection) -> HostPlacement {
        HostPlacement {
            provider: self.provider,
            zone: configured.zone.clone().or(self.zone),
            region: configured.region.clone().or(self.region),
            account: configured.account.clone().or(self.account),
            vpc: configured.vpc.clone().or(self.vpc),
        }
    }
}

/// Places addresses and categorises flow pairs.
#[derive(Debug, Default, Clone)]
pub struct Classifier {
    networks: PrefixTable<Placement>,
    services: ServiceTable,
    host: Placement,
    host_info: HostPlacement,
}

fn arc(s: &Option<String>) -> Option<Arc<str>> {
    s.as_deref().map(Arc::from)
}

impl Classifier {
    pub fn new(section: &ResourcesSection, host: HostPlacement) -> Result<Self, ResourcesError> {
        let mut networks = PrefixTable::default();
        for (cidr, entry) in &section.networks {
            let prefix: IpNet = cidr
                .trim()
                .parse()
                .map_err(|_| ResourcesError::Cidr { cidr: cidr.clone() })?;
            let empty = |what| ResourcesError::Empty {
                cidr: cidr.clone(),
                what,
            };
            if entry.name.trim().is_empty() {
                return Err(empty("name"));
            }
            for (what, v) in [("vpc", &entry.vpc), ("zone", &entry.zone), ("region", &entry.region)] {
                if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    return Err(empty(what));
                }
            }
            networks.insert(
                prefix,
                Placement {
                    subnet: Some(Arc::from(entry.name.as_str())),
                    vpc: arc(&entry.vpc),
                    zone: arc(&entry.zone),
                    region: arc(&entry.region),
                },
            );
        }
        let mut services = ServiceTable::default();
        for source in &section.service_lists {
            let n = services.load(source)?;
            tracing::info!(path = %source.path.display(), prefixes = n, "service list loaded");
        }
        Ok(Self {
            networks,
            services,
            host: Placement {
                subnet: None,
                vpc: arc(&host.vpc),
                zone: arc(&host.zone),
                region: arc(&host.region),
            },
            host_info: host,
        })
    }

    pub fn host(&self) -> &HostPlacement {
        &self.host_info
    }

    /// Where a local address sits: its network, then the host's placement.
    pub fn place_local(&self, addr: IpAddr) -> Placement {
        match self.networks.lookup(addr) {
            Some((_, network)) if !addr.to_canonical().is_loopback() => network.clone().or(&self.host),
            _ => self.host.clone(),
        }
    }

    pub fn classify(&self, key: &FlowKey) -> PairContext {
        let local = self.place_local(key.local);
        let peer_addr = key.remote.to_canonical();
        if peer_addr.is_loopback() || peer_addr == key.local.to_canonical() {
            return PairContext {
                category: compare(&local, &local),
                peer: local.clone(),
                local,
                peer_service: None,
            };
        }
        if let Some((_, peer)) = self.networks.lookup(peer_addr) {
            return PairContext {
                category: compare(&local, peer),
                peer: peer.clone(),
                local,
                peer_service: None,
            };
        }
        if let Some(range) = self.services.lookup(peer_addr) {
            return PairContext {
                category: Category::Service,
                peer: Placement {
                    region: range.region.clone(),
                    ..Default::default()
                },
                local,
                peer_service: Some(Arc::clone(&range.service)),
            };
        }
        PairContext {
            category: if is_private(peer_addr) {
                Category::Unclassified
            } else {
                Category::Internet
            },
            local,
            peer: Placement::default(),
            peer_service: None,
        }
    }

    /// Every name the configuration and the lists define, for validating monitors.
    pub fn known_names(&self) -> KnownNames {
        let mut names = KnownNames::default();
        let mut add = |p: &Placement| {
            names.subnets.extend(p.subnet.iter().map(|s| s.to_string()));
            names.vpcs.extend(p.vpc.iter().map(|s| s.to_string()));
            names.zones.extend(p.zone.iter().map(|s| s.to_string()));
            names.regions.extend(p.region.iter().map(|s| s.to_string()));
        };
        self.networks.values().for_each(&mut add);
        add(&self.host);
        for r in self.services.ranges() {
            names.services.insert(r.service.to_string());
            names.regions.extend(r.region.iter().map(|s| s.to_string()));
        }
        names
    }

    pub fn service_prefixes(&self) -> usize {
        self.services.len()
    }
}

#[derive(Debug, Default)]
pub struct KnownNames {
    pub subnets: std::collections::BTreeSet<String>,
    pub vpcs: std::collections::BTreeSet<String>,
    pub zones: std::collections::BTreeSet<String>,
    pub regions: std::collections::BTreeSet<String>,
    pub services: std::collections::BTreeSet<String>,
}

/// Rule 3: the first difference between two placed ends.
fn compare(local: &Placement, peer: &Placement) -> Category {
    fn differ(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> Option<bool> {
        Some(a.as_ref()? != b.as_ref()?)
    }
    if differ(&local.region, &peer.region) == Some(true) {
        return Category::InterRegion;
    }
    if differ(&local.vpc, &peer.vpc) == Some(true) {
        return Category::InterVpc;
    }
    if differ(&local.subnet, &peer.subnet) == Some(false) {
        return Category::IntraZone;
    }
    match differ(&local.zone, &peer.zone) {
        Some(true) => Category::InterZone,
        Some(false) => Category::IntraZone,
        None => Category::Unclassified,
    }
}

/// Addresses that never reach the internet: RFC 1918, shared (CGNAT), loopback, link-local,
/// unspecified, multicast, broadcast, reserved; IPv6 unique-local, link-local, multicast.
pub fn is_private(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            let [b0, b1, ..] = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || (b0 == 100 && (64..128).contains(&b1))
                || b0 >= 240
                || b0 == 0
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::service_lists::ListFormat;
    use crate::flows::Role;

    fn network(name: &str, vpc: &str, zone: &str, region: &str) -> NetworkEntry {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        NetworkEntry {
            name: name.into(),
            vpc: some(vpc),
            zone: some(zone),
            region: some(region),
        }
    }

    fn classifier(extra_lists: Vec<ServiceListSource>) -> Classifier {
        let mut section = ResourcesSection::default();
        for (cidr, n) in [
            ("10.0.1.0/24", network("app-a", "vpc-1", "zone-a", "r1")),
            ("10.0.2.0/24", network("app-b", "vpc-1", "zone-b", "r1")),
            ("10.0.3.0/24", network("app-c", "vpc-1", "zone-a", "r1")),
            ("10.0.0.0/16", network("vpc-1-rest", "vpc-1", "", "r1")),
            ("10.1.0.0/16", network("peered", "vpc-2", "zone-a", "r1")),
            ("10.9.0.0/16", network("far", "vpc-9", "zone-x", "r2")),
            ("fd00:1::/64", network("app-a6", "vpc-1", "zone-a", "r1")),
            ("fd00:2::/64", network("app-b6", "vpc-1", "zone-b", "r1")),
        ] {
            section.networks.insert(cidr.into(), n);
        }
        section.service_lists = extra_lists;
        Classifier::new(&section, HostPlacement::default().overridden_by(&section.host)).expect("classifier")
    }

    fn key(local: &str, remote: &str) -> FlowKey {
        FlowKey {
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
            service_port: 443,
            role: Role::Client,
        }
    }

    fn category(c: &Classifier, local: &str, remote: &str) -> Category {
        c.classify(&key(local, remote)).category
    }

    #[test]
    fn every_category() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ip-ranges.json");
        std::fs::write(&path, crate::enrich::service_lists::tests::AWS_SAMPLE).expect("write");
        let c = classifier(vec![ServiceListSource {
            path,
            format: ListFormat::Aws,
            services: vec![],
        }]);
        assert_eq!(category(&c, "10.0.1.5", "10.0.1.6"), Category::IntraZone, "same subnet");
        assert_eq!(category(&c, "10.0.1.5", "10.0.3.6"), Category::IntraZone, "same zone");
        assert_eq!(category(&c, "10.0.1.5", "10.0.2.6"), Category::InterZone);
        assert_eq!(category(&c, "10.0.1.5", "10.1.0.6"), Category::InterVpc);
        assert_eq!(category(&c, "10.0.1.5", "10.9.0.6"), Category::InterRegion);
        let s3 = c.classify(&key("10.0.1.5", "52.95.128.9"));
        assert_eq!(s3.category, Category::Service);
        assert_eq!(s3.peer_service.as_deref(), Some("S3"));
        assert_eq!(s3.peer.region.as_deref(), Some("us-east-1"));
        assert_eq!(category(&c, "10.0.1.5", "93.184.216.34"), Category::Internet);
        assert_eq!(category(&c, "10.0.1.5", "192.168.7.7"), Category::Unclassified);
        assert_eq!(category(&c, "10.0.1.5", "100.64.0.1"), Category::Unclassified, "CGNAT");
        assert_eq!(
            category(&c, "10.0.1.5", "10.0.77.1"),
            Category::Unclassified,
            "zone unknown on the peer's network"
        );
        let ctx = c.classify(&key("10.0.1.5", "10.0.2.6"));
        assert_eq!(ctx.local.subnet.as_deref(), Some("app-a"));
        assert_eq!(ctx.peer.zone.as_deref(), Some("zone-b"));
        assert_eq!(ctx.peer_name(), Some("app-b"));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let c = classifier(vec![]);
        assert_eq!(category(&c, "fd00:1::5", "fd00:2::6"), Category::InterZone);
        assert_eq!(category(&c, "fd00:1::5", "fd00:1::7"), Category::IntraZone);
        assert_eq!(category(&c, "fd00:1::5", "2606:4700::1111"), Category::Internet);
        assert_eq!(category(&c, "fd00:1::5", "fe80::1"), Category::Unclassified);
        assert_eq!(
            category(&c, "::ffff:10.0.1.5", "::ffff:10.0.2.6"),
            Category::InterZone,
            "dual-stack sockets report IPv4-mapped addresses"
        );
    }

    #[test]
    fn longest_prefix_wins_and_networks_win_over_service_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ours.csv");
        std::fs::write(&path, "10.0.0.0/8,corp-wide\n52.95.128.0/24,not-s3\n").expect("write");
        let c = classifier(vec![ServiceListSource {
            path,
            format: ListFormat::Csv,
            services: vec![],
        }]);
        assert_eq!(
            c.classify(&key("10.0.1.5", "10.0.0.9")).peer.subnet.as_deref(),
            Some("vpc-1-rest"),
            "the /16 network, not the /8 service list entry"
        );
        assert_eq!(
            c.classify(&key("10.0.1.5", "10.200.0.9")).peer_service.as_deref(),
            Some("corp-wide")
        );
    }

    #[test]
    fn host_placement_fills_the_local_end_and_loopback_is_the_host() {
        let mut section = ResourcesSection::default();
        section
            .networks
            .insert("10.0.2.0/24".into(), network("app-b", "", "zone-b", ""));
        section.host = HostSection {
            zone: Some("zone-a".into()),
            region: Some("r1".into()),
            account: Some("123".into()),
            vpc: None,
        };
        let detected = HostPlacement {
            provider: Some("aws"),
            zone: Some("detected-zone".into()),
            region: Some("detected-region".into()),
            ..Default::default()
        };
        let c = Classifier::new(&section, detected.overridden_by(&section.host)).expect("classifier");
        assert_eq!(c.host().zone.as_deref(), Some("zone-a"), "configured wins");
        assert_eq!(c.host().provider, Some("aws"));
        let ctx = c.classify(&key("172.31.0.4", "10.0.2.9"));
        assert_eq!(ctx.local.zone.as_deref(), Some("zone-a"));
        assert_eq!(ctx.category, Category::InterZone);
        assert_eq!(category(&c, "127.0.0.1", "127.0.0.1"), Category::IntraZone);
        assert_eq!(
            category(&Classifier::default(), "127.0.0.1", "127.0.0.1"),
            Category::Unclassified,
            "no placement known at all"
        );
    }

    #[test]
    fn bad_networks_are_named() {
        let mut section = ResourcesSection::default();
        section.networks.insert("10.0.1.0/33".into(), network("x", "", "", ""));
        let err = Classifier::new(&section, HostPlacement::default())
            .expect_err("bad cidr")
            .to_string();
        assert!(err.contains("\"10.0.1.0/33\" is not a CIDR prefix"), "{err}");
        let mut section = ResourcesSection::default();
        section.networks.insert("10.0.1.0/24".into(), network(" ", "", "", ""));
        let err = Classifier::new(&section, HostPlacement::default())
            .expect_err("empty name")
            .to_string();
        assert!(err.contains("name must not be empty"), "{err}");
    }
}
