//! Flow pairs in the operator's terms: which network, VPC, zone, region or cloud service each end
//! is ([`resources`], [`service_lists`], [`cloud_metadata`]), the pair's category, and which
//! monitors it belongs to ([`monitors`]).
//!
//! Pure once built (the lists are read and the metadata service asked at startup only), except
//! for [`kubernetes`], whose names follow the API server's watches.
pub mod annotate;
pub mod cloud_metadata;
pub mod dns;
pub mod kubernetes;
pub mod monitors;
mod prefixes;
pub mod resources;
pub mod service_lists;

use std::sync::Arc;

pub use annotate::{AnnotatedPair, Annotation, Annotations, FlowView};
pub use monitors::{Monitor, MonitorError, MonitorSection};
pub use prefixes::PrefixTable;
pub use resources::{Category, Classifier, HostPlacement, PairContext, Placement, ResourcesError, ResourcesSection};

use crate::flows::FlowKey;

/// This host's name, from the kernel; `None` where unreadable.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    #[error("invalid configuration: {0}")]
    Monitor(#[from] MonitorError),
}

/// The classifier and the monitors, built once at startup.
#[derive(Debug, Default, Clone)]
pub struct Enricher {
    classifier: Classifier,
    monitors: Vec<Monitor>,
    kubernetes: Option<Arc<kubernetes::Kubernetes>>,
}

impl Enricher {
    /// `detected` is what the metadata service said (if asked); `[resources.host]` wins over it.
    pub fn new(
        resources: &ResourcesSection,
        detected: Option<HostPlacement>,
        monitors: &[MonitorSection],
    ) -> Result<Self, EnrichError> {
        let host = detected.unwrap_or_default().overridden_by(&resources.host);
        let classifier = Classifier::new(resources, host)?;
        let monitors = monitors::compile(monitors, &classifier.known_names())?;
        Ok(Self {
            classifier,
            monitors,
            kubernetes: None,
        })
    }

    /// Adds pod attribution.
    pub fn with_kubernetes(mut self, kubernetes: Arc<kubernetes::Kubernetes>) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    pub fn kubernetes(&self) -> Option<&Arc<kubernetes::Kubernetes>> {
        self.kubernetes.as_ref()
    }

    pub fn classify(&self, key: &FlowKey) -> PairContext {
        self.classifier.classify(key)
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    pub fn monitors(&self) -> &[Monitor] {
        &self.monitors
    }
}
