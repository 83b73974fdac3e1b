//! Every metric name, unit and attribute key flowtel exports: a contract with dashboards, alert
//! rules and users' queries. Spelled here and nowhere else; a renderer translates a name (OTLP to
//! Prometheus) but never spells one again. OpenTelemetry semantic conventions where one exists.

pub const BYTES: &str = "flowtel.tcp.bytes";
pub const SEGMENTS: &str = "flowtel.tcp.segments";
pub const RETRANSMITS: &str = "flowtel.tcp.retransmits";
pub const TIMEOUTS: &str = "flowtel.tcp.timeouts";
pub const RTT: &str = "flowtel.tcp.rtt";
pub const RTT_RECEIVER: &str = "flowtel.tcp.rtt.receiver";
pub const CONNECT_DURATION: &str = "flowtel.tcp.connect.duration";
pub const CONNECTIONS: &str = "flowtel.tcp.connections";
pub const CONNECTIONS_ACTIVE: &str = "flowtel.tcp.connections.active";

pub const NETWORK_TRANSPORT: &str = "network.transport";
pub const NETWORK_TYPE: &str = "network.type";
pub const LOCAL_ADDRESS: &str = "network.local.address";
pub const PEER_ADDRESS: &str = "network.peer.address";
pub const SERVER_PORT: &str = "server.port";
pub const HANDSHAKE_ROLE: &str = "network.tcp.handshake.role";
pub const PROCESS_NAME: &str = "process.executable.name";
pub const IO_DIRECTION: &str = "network.io.direction";
pub const PHASE: &str = "flowtel.tcp.phase";
pub const OUTCOME: &str = "flowtel.tcp.connection.outcome";
pub const ERROR_TYPE: &str = "error.type";
/// The OpenTelemetry metrics SDK's attribute for its cardinality-limit overflow series.
pub const OVERFLOW: &str = "otel.metric.overflow";
pub const FLOW_CATEGORY: &str = "flowtel.flow.category";
pub const LOCAL_SUBNET: &str = "flowtel.local.subnet";
pub const LOCAL_VPC: &str = "flowtel.local.vpc";
pub const LOCAL_ZONE: &str = "flowtel.local.zone";
pub const LOCAL_REGION: &str = "flowtel.local.region";
pub const PEER_SUBNET: &str = "flowtel.peer.subnet";
pub const PEER_VPC: &str = "flowtel.peer.vpc";
pub const PEER_ZONE: &str = "flowtel.peer.zone";
pub const PEER_REGION: &str = "flowtel.peer.region";
pub const PEER_SERVICE: &str = "flowtel.peer.service";
pub const MONITOR: &str = "flowtel.monitor";
pub const PEER_ORIGINAL_ADDRESS: &str = "flowtel.peer.original.address";
pub const PEER_ORIGINAL_PORT: &str = "flowtel.peer.original.port";
/// The name the peer's address was resolved from (the head of any CNAME chain).
pub const PEER_DNS_NAME: &str = "flowtel.peer.dns.name";

pub const K8S_POD_UID: &str = "k8s.pod.uid";
pub const CONTAINER_ID: &str = "container.id";
pub const K8S_POD_NAME: &str = "k8s.pod.name";
pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
pub const K8S_NODE_NAME: &str = "k8s.node.name";
pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
pub const K8S_JOB_NAME: &str = "k8s.job.name";
pub const K8S_CRONJOB_NAME: &str = "k8s.cronjob.name";
pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
pub const PEER_K8S_NAMESPACE_NAME: &str = "flowtel.peer.k8s.namespace.name";
pub const PEER_K8S_POD_NAME: &str = "flowtel.peer.k8s.pod.name";
pub const PEER_K8S_WORKLOAD_NAME: &str = "flowtel.peer.k8s.workload.name";
pub const PEER_K8S_WORKLOAD_KIND: &str = "flowtel.peer.k8s.workload.kind";
pub const PEER_K8S_SERVICE_NAME: &str = "flowtel.peer.k8s.service.name";

pub const AGENT_FLOW_PAIRS: &str = "flowtel.agent.flow_pairs";
pub const AGENT_PAIR_MAP_ENTRIES: &str = "flowtel.agent.pair_map.entries";
pub const AGENT_PAIR_MAP_CAPACITY: &str = "flowtel.agent.pair_map.capacity";
pub const AGENT_DROPPED: &str = "flowtel.agent.dropped";
pub const AGENT_EXPORT_FAILURES: &str = "flowtel.agent.export.failures";
pub const AGENT_NAT_REVERSALS: &str = "flowtel.agent.nat.reversals";
pub const AGENT_DNS_ANSWERS: &str = "flowtel.agent.dns.answers";
pub const AGENT_DNS_CACHE_ENTRIES: &str = "flowtel.agent.dns.cache.entries";
pub const PROCESS_CPU_TIME: &str = "process.cpu.time";
pub const PROCESS_MEMORY_USAGE: &str = "process.memory.usage";
pub const DROP_REASON: &str = "flowtel.drop.reason";
/// Which part reversed a DNATed connection: "kernel" (seen at its SYN) or "conntrack" (it
/// predates the agent).
pub const NAT_PATH: &str = "flowtel.nat.path";
pub const CPU_MODE: &str = "cpu.mode";

pub const HEALTH_STATUS: &str = "flowtel.health.status";
pub const HEALTH_RTT_RATIO: &str = "flowtel.health.rtt.ratio";
pub const HEALTH_RETRANSMIT_RATIO: &str = "flowtel.health.retransmit.ratio";
pub const HEALTH_SCOPE: &str = "flowtel.health.scope";
pub const HEALTH_REASON: &str = "flowtel.health.reason";
pub const HEALTH_ATTRIBUTION: &str = "flowtel.health.attribution";

/// Units (UCUM, as the OpenTelemetry conventions write them).
pub mod unit {
    pub const BYTES: &str = "By";
    pub const SECONDS: &str = "s";
    pub const RATIO: &str = "1";
    pub const SEGMENT: &str = "{segment}";
    pub const TIMEOUT: &str = "{timeout}";
    pub const CONNECTION: &str = "{connection}";
    pub const PAIR: &str = "{pair}";
    pub const ENTRY: &str = "{entry}";
    pub const EVENT: &str = "{event}";
    pub const EXPORT: &str = "{export}";
    pub const RECORD: &str = "{record}";
    /// Not "1": Prometheus translators suffix a unit-1 gauge with `_ratio`, and the status must
    /// be `flowtel_health_status` on every path.
    pub const STATUS: &str = "{status}";
}
