//! The kernel side: loads bpf/flowtel.bpf.c, attaches it, and each poll turns the kernel's
//! per-interval pair map into owned flow deltas.
//!
//! Guarantees: every fold the kernel makes lands in exactly one poll's deltas (the pair map is
//! swapped, with an RCU grace period, before it is drained); folds that found the map full are
//! reported through the cumulative overflow bucket; every drop is counted in [`AgentCounters`].
//! This is the only module that touches libbpf-rs or generated skeleton types.
mod cgroup;
mod conntrack;
mod decode;
pub mod dns_capture;
pub mod nat;
mod netns;
mod preflight;

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};
use serde::Serialize;

pub use cgroup::CgroupTarget;

/// The root of this host's cgroup-v2 hierarchy, wherever it is mounted.
pub fn cgroup2_root() -> Result<PathBuf, SamplerError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| SamplerError::Io {
        what: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    cgroup::detect_root(&mountinfo)
}

use crate::flows::{FlowCounters, PairDelta};

mod skel {
    #![allow(
        clippy::all,
        clippy::pedantic,
        unused_imports,
        non_camel_case_types,
        non_snake_case,
        dead_code
    )]
    include!(concat!(env!("OUT_DIR"), "/flowtel.skel.rs"));
}
use skel::{types, FlowtelSkel, FlowtelSkelBuilder};

/// Pair-map capacity: distinct pairs folded within one poll interval, per inner map. Limits come
/// from `enum flowtel_limit` in bpf/flowtel.h, their one definition.
pub const DEFAULT_PAIR_MAP_CAPACITY: u32 = types::flowtel_limit::FLOWTEL_PAIR_MAP_ENTRIES.0;
/// Slots for live DNATed client connections in the kernel by default (nat_peers): a quarter as
/// many live connections make a miss unlikely; a connection that finds no slot stays under the
/// address it connected to (counted: `nat_unstored`).
pub const DEFAULT_NAT_PEER_MAP_CAPACITY: u32 = types::flowtel_limit::FLOWTEL_NAT_PEER_ENTRIES.0;
/// The most nat_peers slots (32 bytes each: 512 MiB).
pub const MAX_NAT_PEER_MAP_CAPACITY: u32 = 1 << 24;
/// The DNS answer ring buffer's default size in bytes.
pub const DEFAULT_DNS_RING_BYTES: u32 = types::flowtel_limit::FLOWTEL_DNS_RING_BYTES.0;

/// The memory page size, which a ring buffer's size must be a multiple of.
pub fn page_size() -> u32 {
    // SAFETY: sysconf reads a constant of the running system
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}
/// Listening sockets remembered within one walk.
pub const DEFAULT_LISTENER_MAP_CAPACITY: u32 = types::flowtel_limit::FLOWTEL_LISTENER_MAP_ENTRIES.0;
// the flow model keeps the kernel's histogram layout: a different bucket count fails the build
const _: () = assert!(types::flowtel_limit::FLOWTEL_HIST_BUCKETS.0 as usize == crate::flows::HIST_BUCKETS);

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("kernel BTF not found at /sys/kernel/btf/vmlinux: flowtel needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or later)")]
    NoBtf,
    #[error("no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup) or set sampler.cgroup_path")]
    NoCgroup2,
    #[error("cgroup path {path} is not a directory in a cgroup v2 hierarchy: fix sampler.cgroup_path (FLOWTEL_SAMPLER__CGROUP_PATH)")]
    CgroupPath { path: PathBuf },
    #[error("missing privilege ({what}): run flowtel as root or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN")]
    Permission { what: String },
    #[error("the BPF object is not the one this binary was built with: {0}")]
    Object(&'static str),
    #[error("{what}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Sampler settings; see config/flowtel.toml for each one's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    pub cgroup_path: Option<PathBuf>,
    pub pair_map_capacity: u32,
    pub listener_map_capacity: u32,
    pub per_ack_rtt: bool,
    /// Least time between two socket walks; zero: every poll. A walk visits every TCP socket
    /// (about 1.5 us per live one, 0.45 us per TIME_WAIT one), so many live sockets want it
    /// sparser than the poll, which only drains the pair map.
    pub walk_interval: Duration,
    /// NAT reversal: client connections to these destinations are looked up in conntrack and
    /// keyed by their real peer. Loaded with the programs; `Sampler::set_nat_destinations`
    /// changes the list later (Kubernetes ClusterIPs come and go).
    pub nat: bool,
    pub nat_destinations: Vec<ipnet::IpNet>,
    /// Slots for live DNATed client connections in the kernel (nat_peers), rounded up to a
    /// power of two at load.
    pub nat_peer_map_capacity: u32,
    /// DNS capture: answers received by the cgroup's sockets are handed up through a ring
    /// buffer of `dns_ring_bytes` (a power of two, a multiple of the page size).
    pub dns: bool,
    pub dns_ring_bytes: u32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            cgroup_path: None,
            pair_map_capacity: DEFAULT_PAIR_MAP_CAPACITY,
            listener_map_capacity: DEFAULT_LISTENER_MAP_CAPACITY,
            per_ack_rtt: false,
            walk_interval: Duration::ZERO,
            nat: false,
            nat_destinations: Vec::new(),
            nat_peer_map_capacity: DEFAULT_NAT_PEER_MAP_CAPACITY,
            dns: false,
            dns_ring_bytes: DEFAULT_DNS_RING_BYTES,
        }
    }
}

/// The agent's own counters, cumulative since the sampler started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AgentCounters {
    /// Folds that found the pair map full and went to the overflow bucket (totals kept).
    pub pair_map_full: u64,
    /// Live sockets the walk could not give storage: folded whole at close instead.
    pub sock_storage_failed: u64,
    /// Listeners not remembered in a walk: a pre-existing socket may be taken for a client.
    pub listener_map_full: u64,
    /// Callbacks that could not resolve their tcp_sock.
    pub no_tcp_sock: u64,
    /// Socket visits made by walks.
    pub walk_sockets: u64,
    /// Pair entries that could not be decoded (never expected).
    pub undecodable_pairs: u64,
    /// Close folds the kernel skipped: a tracing program does not run nested on one CPU, so a
    /// socket destroyed by a softirq while the same fold program runs in process context on
    /// that CPU is not folded (the program's `recursion_misses`). What that socket counted since
    /// the last walk is lost, and counted here.
    pub close_fold_skipped: u64,
    /// Client connections the kernel saw DNATed at their SYN and keyed by the real peer.
    pub nat_reversed: u64,
    /// DNATed SYNs whose real peer could not be stored: those connections stay under the
    /// address they connected to.
    pub nat_unstored: u64,
    /// Connections that predate the agent to a possible DNAT destination, handed to user
    /// space's conntrack lookup.
    pub nat_preexisting: u64,
    /// DNS answers the kernel could not hand up: the ring buffer was full.
    pub dns_ring_full: u64,
    /// DNS ring-buffer records that did not decode (never expected).
    pub dns_undecodable: u64,
    /// Packets from port 53 the kernel could not read (never expected).
    pub dns_capture_failed: u64,
}

/// One poll's result.
#[derive(Debug, Default)]
pub struct KernelSample {
    /// Deltas per pair for the interval, with the walk's active gauge and the owner seen.
    pub pairs: Vec<PairDelta>,
    /// Folds that went to the overflow bucket during the interval.
    pub overflow: FlowCounters,
    pub counters: AgentCounters,
    /// Entries the drained pair map held: its fill, against `pair_map_capacity`.
    pub pair_map_entries: usize,
    /// Whether this poll walked the sockets (and so refreshed the live-connection gauges).
    pub walked: bool,
    pub namespaces_walked: usize,
    /// Processes whose network namespace could not be entered (no CAP_SYS_PTRACE).
    pub namespaces_unreadable: usize,
    pub walk_time: Duration,
    pub poll_time: Duration,
    /// The destination each pair translated by NAT reversal this poll connected to.
    pub nat_originals: Vec<(crate::flows::FlowKey, std::net::SocketAddr)>,
    /// NAT reversal's counters, cumulative.
    pub nat: nat::NatStats,
    /// DNS payloads received since the last poll, when the capture is on.
    pub dns: Vec<dns_capture::DnsCapture>,
}

/// A poll that comes a little early still walks: polls are paced by sleeps, not by the clock.
const WALK_SLACK: Duration = Duration::from_millis(50);

/// The loaded and attached BPF programs. Detached when dropped, or when the process dies
/// (bpf_link; nothing is pinned).
pub struct Sampler {
    skel: FlowtelSkel<'static>,
    _sockops_link: Link,
    _nat_link: Option<Link>,
    _dns_link: Option<Link>,
    dns_ring: Option<dns_capture::DnsRing>,
    _close_links: Vec<Link>,
    walk_link: Link,
    /// Swaps so far, as the programs read them (flowtel_swaps); its low bit names the inner pair
    /// map receiving folds (0: pairs_a).
    swaps: u32,
    namespaces: netns::Namespaces,
    overflow_seen: FlowCounters,
    target: CgroupTarget,
    walk_interval: Duration,
    last_walk: Option<Instant>,
    nat: Option<nat::NatResolver>,
    /// The prefixes now in the kernel's NAT-destination map.
    nat_destinations: Vec<ipnet::IpNet>,
}

impl Sampler {
    /// Checks the host, loads, and attaches. Errors name the fix.
    pub fn start(config: SamplerConfig) -> Result<Self, SamplerError> {
        preflight::check()?;
        if let Some(bytes) = preflight::raise_memlock_limit() {
            // only kernels before 5.11 charge maps to it; newer ones charge the memory cgroup
            tracing::debug!(
                memlock_limit_bytes = bytes,
                "RLIMIT_MEMLOCK soft limit at its hard limit"
            );
        }
        let target = cgroup::resolve(config.cgroup_path.as_deref())?;
        route_libbpf_logs();

        // The skeleton borrows its object storage for its whole life; a Sampler lives about as
        // long as the process, so the few bytes are leaked rather than self-referenced. The
        // object itself (maps, programs, fds) is still closed when the skeleton drops.
        let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = FlowtelSkelBuilder::default()
            .open(storage)
            .map_err(|source| SamplerError::Bpf {
                what: "opening the BPF object".into(),
                source,
            })?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or(SamplerError::Object("no .rodata section"))?;
        rodata.flowtel_per_ack_rtt = config.per_ack_rtt;
        rodata.flowtel_cgroup_id = target.id;
        rodata.flowtel_cgroup_level = target.level;
        rodata.flowtel_nat = config.nat;
        // an open-addressed table indexed by a mask: a power of two (1 when NAT reversal is off)
        let nat_slots = if config.nat {
            config
                .nat_peer_map_capacity
                .clamp(1, MAX_NAT_PEER_MAP_CAPACITY)
                .next_power_of_two()
        } else {
            1
        };
        rodata.flowtel_nat_slot_mask = nat_slots - 1;
        // the egress program runs for every packet the cgroup sends: loaded only when needed
        open.progs.flowtel_nat_syn.set_autoload(config.nat);
        // the ingress program runs for every packet the cgroup receives: likewise
        open.progs.flowtel_dns.set_autoload(config.dns);
        let sizing = [
            (&mut open.maps.pairs_a, config.pair_map_capacity),
            (&mut open.maps.pairs_b, config.pair_map_capacity),
            (&mut open.maps.listeners, config.listener_map_capacity),
            // an array: no memory for it unless NAT reversal is on
            (&mut open.maps.nat_peers, nat_slots),
        ];
        // a ring buffer's size is a power of two and a multiple of the page size (checked with
        // the configuration); the smallest one when the capture is off
        let ring_bytes = if config.dns { config.dns_ring_bytes } else { page_size() };
        open.maps
            .dns_answers
            .set_max_entries(ring_bytes)
            .map_err(|source| SamplerError::Bpf {
                what: format!("sizing the DNS answer ring buffer to {ring_bytes} bytes (dns.ring_buffer_bytes)"),
                source,
            })?;
        for (map, capacity) in sizing {
            map.set_max_entries(capacity.max(1))
                .map_err(|source| SamplerError::Bpf {
                    what: "sizing a BPF map".into(),
                    source,
                })?;
        }
        let skel = open
            .load()
            .map_err(|source| load_error("loading the BPF programs (verifier log above)", source))?;
        // the destinations before the programs attach: a connection made as soon as the agent
        // says it is attached is reversed too
        let (nat_destinations, left_out) = if config.nat {
            fill_nat_destinations(&skel.maps.nat_destinations, &[], &config.nat_destinations)
        } else {
            (Vec::new(), 0)
        };
        if left_out > 0 {
            tracing::warn!(
                left_out,
                capacity = NAT_DESTINATIONS_CAPACITY,
                "NAT destinations beyond the capacity are not reversed"
            );
        }

        let cgroup_dir = std::fs::File::open(&target.path).map_err(|_| SamplerError::CgroupPath {
            path: target.path.clone(),
        })?;
        // the close folds first: a socket sock_ops tracks must never close unseen
        let close_links = [
            (&skel.progs.flowtel_destroy, "tp_btf/tcp_destroy_sock"),
            (&skel.progs.flowtel_reset_sent, "tp_btf/tcp_send_reset"),
            (&skel.progs.flowtel_reset_received, "tp_btf/tcp_receive_reset"),
        ]
        .into_iter()
        .map(|(prog, hook)| {
            prog.attach()
                .map_err(|source| load_error(&format!("attaching the close fold to {hook}"), source))
        })
        .collect::<Result<Vec<Link>, _>>()?;
        let sockops_link = skel
            .progs
            .flowtel_sockops
            .attach_cgroup(cgroup_dir.as_raw_fd())
            .map_err(|source| load_error(&format!("attaching sock_ops to {}", target.path.display()), source))?;
        // NAT reversal's SYN program: attached with sock_ops, so that no connection made from
        // now on is keyed by the address it asked for
        let nat_link = if config.nat {
            Some(
                skel.progs
                    .flowtel_nat_syn
                    .attach_cgroup(cgroup_dir.as_raw_fd())
                    .map_err(|source| {
                        load_error(
                            &format!("attaching the NAT reversal egress program to {}", target.path.display()),
                            source,
                        )
                    })?,
            )
        } else {
            None
        };
        let (dns_link, dns_ring) = if config.dns {
            let link = skel
                .progs
                .flowtel_dns
                .attach_cgroup(cgroup_dir.as_raw_fd())
                .map_err(|source| {
                    load_error(
                        &format!("attaching the DNS capture ingress program to {}", target.path.display()),
                        source,
                    )
                })?;
            (Some(link), Some(dns_capture::DnsRing::new(&skel.maps.dns_answers)?))
        } else {
            (None, None)
        };
        let walk_link = skel
            .progs
            .flowtel_walk
            .attach()
            .map_err(|source| load_error("attaching the iter/tcp socket walk", source))?;
        tracing::info!(cgroup = %target.path.display(), pair_map_capacity = config.pair_map_capacity, "sampler attached");

        Ok(Self {
            skel,
            _sockops_link: sockops_link,
            _nat_link: nat_link,
            _dns_link: dns_link,
            dns_ring,
            _close_links: close_links,
            walk_link,
            swaps: 0,
            namespaces: netns::Namespaces::default(),
            overflow_seen: FlowCounters::default(),
            target,
            walk_interval: config.walk_interval,
            last_walk: None,
            nat: config.nat.then(nat::NatResolver::new),
            nat_destinations,
        })
    }

    /// Replaces the destinations whose connections NAT reversal looks up; returns how many were
    /// left out for want of room (the map holds [`NAT_DESTINATIONS_CAPACITY`] prefixes).
    pub fn set_nat_destinations(&mut self, destinations: &[ipnet::IpNet]) -> Result<usize, SamplerError> {
        let (kept, left_out) =
            fill_nat_destinations(&self.skel.maps.nat_destinations, &self.nat_destinations, destinations);
        self.nat_destinations = kept;
        Ok(left_out)
    }

    /// The DNS answers waiting in the ring buffer (none when the capture is off).
    pub fn read_dns_answers(&mut self) -> Result<Vec<dns_capture::DnsCapture>, SamplerError> {
        match self.dns_ring.as_mut() {
            Some(ring) => ring.drain(),
            None => Ok(Vec::new()),
        }
    }

    pub fn target(&self) -> &CgroupTarget {
        &self.target
    }

    /// Walks live sockets, swaps the pair map, and drains the interval that just ended.
    pub fn poll(&mut self) -> Result<KernelSample, SamplerError> {
        let started = Instant::now();
        // answers first: a name resolved just before a connection is known when its pair is
        let dns = self.read_dns_answers()?;
        let walk_due = self
            .last_walk
            .is_none_or(|t| started.duration_since(t) + WALK_SLACK >= self.walk_interval);
        let (mut namespaces_walked, mut walk_time) = (0, Duration::ZERO);
        if walk_due {
            self.last_walk = Some(started);
            self.namespaces.refresh();
            namespaces_walked = self.namespaces.walk_all(self.walk_link.as_fd().as_raw_fd())?;
            walk_time = started.elapsed();
            self.clear_listeners();
        }

        // the map that took folds until now: the low bit of the swap count names it
        let drained_is_b = self.swaps & 1 == 1;
        self.swap_pair_maps()?;
        let inner = if drained_is_b {
            &self.skel.maps.pairs_b
        } else {
            &self.skel.maps.pairs_a
        };
        let mut counters = AgentCounters::default();
        let (mut pairs, pending, pair_map_entries) = drain(inner, &mut counters)?;
        let mut nat_originals = Vec::new();
        if let Some(resolver) = self.nat.as_mut() {
            let resolved = resolver.resolve(pending);
            pairs.extend(resolved.pairs);
            nat_originals = resolved.originals;
        } else {
            // never expected without NAT reversal, but never dropped either: the table merges
            // entries that share a key
            pairs.extend(pending.into_iter().map(|p| PairDelta {
                key: p.key,
                counters: p.counters,
                owner: p.owner,
            }));
        }

        let overflow_total = self.read_overflow()?;
        let overflow = overflow_total.saturating_sub(&self.overflow_seen);
        self.overflow_seen = overflow_total;

        self.read_counters(&mut counters)?;
        Ok(KernelSample {
            pairs,
            overflow,
            counters,
            pair_map_entries,
            walked: walk_due,
            namespaces_walked,
            namespaces_unreadable: self.namespaces.unreadable,
            walk_time,
            poll_time: started.elapsed(),
            nat_originals,
            nat: self.nat.as_ref().map(|n| n.stats).unwrap_or_default(),
            dns,
        })
    }

    /// Points the programs at the other pair map: the flag in .bss first, then the outer map,
    /// whose update returns only after an RCU grace period, so that no program still folds
    /// into the map about to be drained.
    fn swap_pair_maps(&mut self) -> Result<(), SamplerError> {
        let swaps = self.swaps.wrapping_add(1);
        let to_b = swaps & 1 == 1;
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .ok_or(SamplerError::Object("no .bss section"))?;
        // SAFETY: an aligned u32 in the mmapped .bss that the programs read and never write.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!(bss.flowtel_swaps), swaps) };
        let next = if to_b {
            &self.skel.maps.pairs_b
        } else {
            &self.skel.maps.pairs_a
        };
        let fd = next.as_fd().as_raw_fd();
        self.skel
            .maps
            .pairs_active
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| SamplerError::Bpf {
                what: "swapping the pair maps".into(),
                source,
            })?;
        self.swaps = swaps;
        Ok(())
    }

    fn clear_listeners(&self) {
        let map = &self.skel.maps.listeners;
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for key in keys {
            // a concurrent walk may have removed it: nothing to do then
            let _ = map.delete(&key);
        }
    }

    fn read_overflow(&self) -> Result<FlowCounters, SamplerError> {
        let values = self
            .skel
            .maps
            .overflow
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| SamplerError::Bpf {
                what: "reading the overflow bucket".into(),
                source,
            })?
            .unwrap_or_default();
        Ok(decode::pair_stats_per_cpu(values.iter().map(Vec::as_slice)).0)
    }

    fn read_counters(&self, counters: &mut AgentCounters) -> Result<(), SamplerError> {
        let map = &self.skel.maps.counters;
        let read = |c: types::flowtel_counter| -> Result<u64, SamplerError> {
            let values = map
                .lookup_percpu(&c.0.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| SamplerError::Bpf {
                    what: "reading the agent counters".into(),
                    source,
                })?
                .unwrap_or_default();
            Ok(decode::counter_per_cpu(values.iter().map(Vec::as_slice)))
        };
        counters.pair_map_full = read(types::flowtel_counter::FLOWTEL_CTR_PAIR_MAP_FULL)?;
        counters.sock_storage_failed = read(types::flowtel_counter::FLOWTEL_CTR_SOCK_STORAGE_FAILED)?;
        counters.listener_map_full = read(types::flowtel_counter::FLOWTEL_CTR_LISTENER_MAP_FULL)?;
        counters.walk_sockets = read(types::flowtel_counter::FLOWTEL_CTR_WALK_SOCKETS)?;
        counters.no_tcp_sock = read(types::flowtel_counter::FLOWTEL_CTR_NO_TCP_SOCK)?;
        counters.nat_reversed = read(types::flowtel_counter::FLOWTEL_CTR_NAT_REVERSED)?;
        counters.nat_unstored = read(types::flowtel_counter::FLOWTEL_CTR_NAT_UNSTORED)?;
        counters.nat_preexisting = read(types::flowtel_counter::FLOWTEL_CTR_NAT_PREEXISTING)?;
        counters.dns_ring_full = read(types::flowtel_counter::FLOWTEL_CTR_DNS_RING_FULL)?;
        counters.dns_capture_failed = read(types::flowtel_counter::FLOWTEL_CTR_DNS_CAPTURE_FAILED)?;
        counters.dns_undecodable = self.dns_ring.as_ref().map_or(0, |r| r.undecodable());
        let progs = &self.skel.progs;
        counters.close_fold_skipped = [
            progs.flowtel_destroy.as_fd(),
            progs.flowtel_reset_sent.as_fd(),
            progs.flowtel_reset_received.as_fd(),
        ]
        .into_iter()
        .map(recursion_misses)
        .sum();
        Ok(())
    }
}

/// A program's `recursion_misses`: invocations the kernel skipped because the program was
/// already running on that CPU. 0 if the kernel will not say.
fn recursion_misses(program: std::os::fd::BorrowedFd<'_>) -> u64 {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a plain C struct of `len` bytes, which the kernel fills at most.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(program.as_raw_fd(), &mut info, &mut len) };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

/// Makes the kernel's NAT-destination map hold `wanted` instead of `current`: the prefixes kept,
/// and how many did not fit.
fn fill_nat_destinations(
    map: &impl MapCore,
    current: &[ipnet::IpNet],
    wanted: &[ipnet::IpNet],
) -> (Vec<ipnet::IpNet>, usize) {
    let wanted: std::collections::HashSet<ipnet::IpNet> = wanted.iter().map(ipnet::IpNet::trunc).collect();
    for old in current.iter().filter(|p| !wanted.contains(p)) {
        // already gone is fine
        let _ = map.delete(&nat_prefix_key(old));
    }
    let mut kept = Vec::with_capacity(wanted.len());
    let mut left_out = 0;
    for prefix in wanted {
        if kept.len() >= NAT_DESTINATIONS_CAPACITY {
            left_out += 1;
            continue;
        }
        match map.update(&nat_prefix_key(&prefix), &[1u8], MapFlags::ANY) {
            Ok(()) => kept.push(prefix),
            // full (E2BIG / ENOMEM)
            Err(_) => left_out += 1,
        }
    }
    (kept, left_out)
}

/// Prefixes the kernel's NAT-destination map holds at most (its max_entries).
pub const NAT_DESTINATIONS_CAPACITY: usize = types::flowtel_limit::FLOWTEL_NAT_DESTINATION_ENTRIES.0 as usize;

/// An LPM key: IPv4 v4-mapped, as the programs look it up.
fn nat_prefix_key(prefix: &ipnet::IpNet) -> Vec<u8> {
    let (len, addr) = match prefix {
        ipnet::IpNet::V4(p) => (u32::from(p.prefix_len()) + 96, p.addr().to_ipv6_mapped().octets()),
        ipnet::IpNet::V6(p) => (u32::from(p.prefix_len()), p.addr().octets()),
    };
    let mut key = len.to_ne_bytes().to_vec();
    key.extend_from_slice(&addr);
    key
}

/// Reads and empties an inner pair map that no program writes any more.
/// Entries that NAT reversal touched (a client port to look up, or an original address the
/// kernel kept) come back apart, to be merged by pair.
fn drain(
    inner: &impl MapCore,
    counters: &mut AgentCounters,
) -> Result<(Vec<PairDelta>, Vec<nat::Pending>, usize), SamplerError> {
    let keys: Vec<Vec<u8>> = inner.keys().collect();
    let mut pairs = Vec::with_capacity(keys.len());
    let mut pending = Vec::new();
    for key in &keys {
        let values = inner
            .lookup_percpu(key, MapFlags::ANY)
            .map_err(|source| SamplerError::Bpf {
                what: "reading the pair map".into(),
                source,
            })?;
        let Some(values) = values else { continue };
        match decode::pair_key(key) {
            Some(raw) => {
                let (counters, owner) = decode::pair_stats_per_cpu(values.iter().map(Vec::as_slice));
                if raw.client_port == 0 && raw.original.is_none() {
                    pairs.push(PairDelta {
                        key: raw.flow,
                        counters,
                        owner,
                    });
                } else {
                    pending.push(nat::Pending {
                        key: raw.flow,
                        client_port: raw.client_port,
                        original: raw.original,
                        counters,
                        owner,
                    });
                }
            }
            None => counters.undecodable_pairs += 1,
        }
    }
    if !keys.is_empty() {
        let flat: Vec<u8> = keys.iter().flatten().copied().collect();
        inner
            .delete_batch(&flat, keys.len() as u32, MapFlags::ANY, MapFlags::ANY)
            .map_err(|source| SamplerError::Bpf {
                what: "emptying the pair map".into(),
                source,
            })?;
    }
    Ok((pairs, pending, keys.len()))
}

fn load_error(what: &str, source: libbpf_rs::Error) -> SamplerError {
    if matches!(source.kind(), libbpf_rs::ErrorKind::PermissionDenied) {
        SamplerError::Permission { what: what.to_string() }
    } else {
        SamplerError::Bpf {
            what: what.to_string(),
            source,
        }
    }
}

fn route_libbpf_logs() {
    fn forward(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
            libbpf_rs::PrintLevel::Info => tracing::info!(target: "libbpf", "{msg}"),
            libbpf_rs::PrintLevel::Debug => tracing::debug!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, forward)));
}
