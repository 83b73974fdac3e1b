//! `[[monitors]]`: a named local set and remote set of resources. A flow pair belongs to a
//! monitor when its local end matches any local selector and its peer any remote selector.
//!
//! ```toml
//! [[monitors]]
//! name = "app-a-to-data"
//! local = [{ subnet = "app-a" }]
//! remote = [{ subnet = "db" }, { service = "S3" }]
//! ```
use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::resources::{KnownNames, PairContext};
use crate::flows::FlowKey;

/// Monitors at most: each one is a handful of series per export and a health group.
pub const MAX_MONITORS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LocalSelector {
    Subnet(String),
    Vpc(String),
    Zone(String),
    Cidr(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteSelector {
    Subnet(String),
    Vpc(String),
    Zone(String),
    Region(String),
    Service(String),
    Cidr(String),
    /// Every peer.
    Everywhere,
}

/// One `[[monitors]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    pub name: String,
    pub local: Vec<LocalSelector>,
    pub remote: Vec<RemoteSelector>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("monitor {monitor:?}: {problem}")]
pub struct MonitorError {
    pub monitor: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
enum Match {
    Subnet(Arc<str>),
    Vpc(Arc<str>),
    Zone(Arc<str>),
    Region(Arc<str>),
    Service(Arc<str>),
    Cidr(IpNet),
    Everywhere,
}

#[derive(Debug, Clone)]
pub struct Monitor {
    pub name: Arc<str>,
    local: Vec<Match>,
    remote: Vec<Match>,
}

fn holds(m: &Match, placement: &super::Placement, service: Option<&Arc<str>>, addr: std::net::IpAddr) -> bool {
    let eq = |a: &Option<Arc<str>>, b: &Arc<str>| a.as_ref() == Some(b);
    match m {
        Match::Subnet(s) => eq(&placement.subnet, s),
        Match::Vpc(s) => eq(&placement.vpc, s),
        Match::Zone(s) => eq(&placement.zone, s),
        Match::Region(s) => eq(&placement.region, s),
        Match::Service(s) => service == Some(s),
        Match::Cidr(net) => net.contains(&addr.to_canonical()),
        Match::Everywhere => true,
    }
}

impl Monitor {
    pub fn matches(&self, key: &FlowKey, context: &PairContext) -> bool {
        self.local.iter().any(|m| holds(m, &context.local, None, key.local))
            && self
                .remote
                .iter()
                .any(|m| holds(m, &context.peer, context.peer_service.as_ref(), key.remote))
    }
}

/// Checks every monitor against the names the resources define, and compiles them.
pub fn compile(sections: &[MonitorSection], known: &KnownNames) -> Result<Vec<Monitor>, MonitorError> {
    if sections.len() > MAX_MONITORS {
        return Err(MonitorError {
            monitor: sections[MAX_MONITORS].name.clone(),
            problem: format!("more than {MAX_MONITORS} monitors; merge some"),
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(sections.len());
    for section in sections {
        let problem = |problem: String| MonitorError {
            monitor: section.name.clone(),
            problem,
        };
        let name = section.name.trim();
        if name.is_empty() {
            return Err(problem("the name must not be empty".into()));
        }
        if !seen.insert(name.to_string()) {
            return Err(problem("two monitors have this name".into()));
        }
        if section.local.is_empty() {
            return Err(problem(
                "local is empty; give at least one of subnet, vpc, zone, cidr".into(),
            ));
        }
        if section.remote.is_empty() {
            return Err(problem(
                "remote is empty; give at least one of subnet, vpc, zone, region, service, cidr, or \"everywhere\""
                    .into(),
            ));
        }
        let known_name = |kind: &str, set: &BTreeSet<String>, value: &str| -> Result<Arc<str>, MonitorError> {
            if set.contains(value) {
                return Ok(Arc::from(value));
            }
            let listed: Vec<&str> = set.iter().map(String::as_str).take(8).collect();
            Err(problem(format!(
                "unknown {kind} {value:?} (known: {}); define it under [resources]",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            )))
        };
        let cidr = |value: &str| {
            value
                .trim()
                .parse::<IpNet>()
                .map(|n| Match::Cidr(n.trunc()))
                .map_err(|_| problem(format!("{value:?} is not a CIDR prefix")))
        };
        let local = section
            .local
            .iter()
            .map(|s| match s {
                LocalSelector::Subnet(v) => known_name("subnet", &known.subnets, v).map(Match::Subnet),
                LocalSelector::Vpc(v) => known_name("vpc", &known.vpcs, v).map(Match::Vpc),
                LocalSelector::Zone(v) => known_name("zone", &known.zones, v).map(Match::Zone),
                LocalSelector::Cidr(v) => cidr(v),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let remote = section
            .remote
            .iter()
            .map(|s| match s {
                RemoteSelector::Subnet(v) => known_name("subnet", &known.subnets, v).map(Match::Subnet),
                RemoteSelector::Vpc(v) => known_name("vpc", &known.vpcs, v).map(Match::Vpc),
                RemoteSelector::Zone(v) => known_name("zone", &known.zones, v).map(Match::Zone),
                RemoteSelector::Region(v) => known_name("region", &known.regions, v).map(Match::Region),
                RemoteSelector::Service(v) => known_name("service", &known.services, v).map(Match::Service),
                RemoteSelector::Cidr(v) => cidr(v),
                RemoteSelector::Everywhere => Ok(Match::Everywhere),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Monitor {
            name: Arc::from(name),
            local,
            remote,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::resources::{Classifier, HostPlacement, NetworkEntry, ResourcesSection};
    use crate::flows::Role;

    fn classifier() -> Classifier {
        let mut section = ResourcesSection::default();
        let net = |name: &str, zone: &str| NetworkEntry {
            name: name.into(),
            vpc: Some("vpc-1".into()),
            zone: Some(zone.into()),
            region: Some("r1".into()),
        };
        section.networks.insert("10.0.1.0/24".into(), net("app-a", "zone-a"));
        section.networks.insert("10.0.2.0/24".into(), net("db", "zone-b"));
        Classifier::new(&section, HostPlacement::default()).expect("classifier")
    }

    fn monitor(local: Vec<LocalSelector>, remote: Vec<RemoteSelector>) -> MonitorSection {
        MonitorSection {
            name: "m".into(),
            local,
            remote,
        }
    }

    fn matches(m: &Monitor, c: &Classifier, local: &str, remote: &str) -> bool {
        let key = FlowKey {
            local: local.parse().expect("ip"),
            remote: remote.parse().expect("ip"),
            service_port: 5432,
            role: Role::Client,
        };
        m.matches(&key, &c.classify(&key))
    }

    #[test]
    fn selectors_match_on_both_ends() {
        let c = classifier();
        let known = c.known_names();
        let compiled = compile(
            &[
                monitor(
                    vec![LocalSelector::Subnet("app-a".into())],
                    vec![RemoteSelector::Subnet("db".into())],
                ),
                monitor(
                    vec![LocalSelector::Zone("zone-a".into())],
                    vec![RemoteSelector::Everywhere],
                ),
                monitor(
                    vec![LocalSelector::Cidr("10.0.0.0/16".into())],
                    vec![RemoteSelector::Cidr("203.0.113.0/24".into())],
                ),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, mut m)| {
                m.name = format!("m{i}");
                m
            })
            .collect::<Vec<_>>(),
            &known,
        )
        .expect("valid");
        assert!(matches(&compiled[0], &c, "10.0.1.5", "10.0.2.9"));
        assert!(
            !matches(&compiled[0], &c, "10.0.2.9", "10.0.1.5"),
            "ends are not symmetric"
        );
        assert!(!matches(&compiled[0], &c, "10.0.1.5", "8.8.8.8"));
        assert!(matches(&compiled[1], &c, "10.0.1.5", "8.8.8.8"));
        assert!(!matches(&compiled[1], &c, "10.0.2.5", "8.8.8.8"));
        assert!(matches(&compiled[2], &c, "10.0.2.5", "203.0.113.9"));
        assert!(!matches(&compiled[2], &c, "10.0.2.5", "203.0.114.9"));
    }

    #[test]
    fn invalid_monitors_are_named() {
        let known = classifier().known_names();
        let err = |m: MonitorSection| compile(&[m], &known).expect_err("invalid").to_string();
        let e = err(monitor(vec![], vec![RemoteSelector::Everywhere]));
        assert!(e.contains("monitor \"m\": local is empty"), "{e}");
        let e = err(monitor(vec![LocalSelector::Subnet("app-a".into())], vec![]));
        assert!(e.contains("remote is empty"), "{e}");
        let e = err(monitor(
            vec![LocalSelector::Subnet("app-z".into())],
            vec![RemoteSelector::Everywhere],
        ));
        assert!(e.contains("unknown subnet \"app-z\" (known: app-a, db)"), "{e}");
        let e = err(monitor(
            vec![LocalSelector::Subnet("app-a".into())],
            vec![RemoteSelector::Service("S3".into())],
        ));
        assert!(e.contains("unknown service \"S3\" (known: none)"), "{e}");
        let e = err(monitor(
            vec![LocalSelector::Cidr("10.0.0.0/40".into())],
            vec![RemoteSelector::Everywhere],
        ));
        assert!(e.contains("\"10.0.0.0/40\" is not a CIDR prefix"), "{e}");
        let twice = monitor(
            vec![LocalSelector::Zone("zone-a".into())],
            vec![RemoteSelector::Everywhere],
        );
        let e = compile(&[twice.clone(), twice], &known)
            .expect_err("duplicate")
            .to_string();
        assert!(e.contains("two monitors have this name"), "{e}");
    }
}
