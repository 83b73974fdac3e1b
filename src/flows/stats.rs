use serde::Serialize;

/// Buckets of a [`Log2Histogram`]; the BPF side uses the same count (bpf/flowtel.h).
pub const HIST_BUCKETS: usize = 32;

/// Connection phase in which a retransmit or retransmission timeout happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshake: SYN or SYN-ACK.
    Syn = 0,
    Established = 1,
    /// After either end sent its FIN.
    Close = 2,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Syn, Phase::Established, Phase::Close];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Syn => "syn",
            Phase::Established => "established",
            Phase::Close => "close",
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The peer answered the SYN with a reset.
    Refused = 0,
    /// No answer before the kernel or the application gave up.
    Timeout = 1,
    /// Reset during the handshake.
    Reset = 2,
    /// An ICMP error: no route to the peer.
    Unreachable = 3,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Reset,
        ConnectFailure::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Reset => "reset",
            ConnectFailure::Unreachable => "unreachable",
        }
    }
}

/// A histogram of durations in power-of-two buckets of 2^-20 s units (0.954 us), as the BPF
/// side fills it: bucket 0 holds up to one unit, bucket k holds (2^(k-1), 2^k] units. That is
/// exactly an OpenTelemetry base-2 exponential histogram at scale 0 in seconds, bucket k being
/// index `k + OTEL_INDEX_OFFSET`. The sum is kept in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Log2Histogram {
    pub count: u64,
    pub sum_us: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Log2Histogram {
    /// Seconds per bucket unit.
    pub const UNIT_SECONDS: f64 = 1.0 / 1_048_576.0;
    /// OpenTelemetry exponential-histogram index (scale 0, seconds) of bucket k is k + this.
    pub const OTEL_INDEX_OFFSET: i32 = -21;

    /// Buckets exported with explicit bounds (Prometheus, OTLP explicit histograms): the upper
    /// bounds of buckets 5..=28, 30.5 us to 256 s, then +Inf. The same `le` values on every path.
    pub const EXPLICIT_BUCKETS: std::ops::RangeInclusive<usize> = 5..=28;

    /// The explicit upper bounds in seconds.
    pub fn explicit_bounds() -> Vec<f64> {
        Self::EXPLICIT_BUCKETS.map(Self::bucket_upper_seconds).collect()
    }

    /// Counts per explicit bucket (not cumulative): one per bound, then the +Inf bucket.
    pub fn explicit_counts(&self) -> Vec<u64> {
        let first = *Self::EXPLICIT_BUCKETS.start();
        let last = *Self::EXPLICIT_BUCKETS.end();
        let mut counts = Vec::with_capacity(last - first + 2);
        counts.push(self.buckets[..=first].iter().sum());
        counts.extend_from_slice(&self.buckets[first + 1..=last]);
        counts.push(self.buckets[last + 1..].iter().sum());
        counts
    }

    /// Upper bound in seconds of bucket `k`.
    pub fn bucket_upper_seconds(k: usize) -> f64 {
        (1u64 << k.min(63)) as f64 * Self::UNIT_SECONDS
    }

    /// The bucket a value falls into, as the BPF side computes it.
    pub fn bucket_of_us(value_us: u64) -> usize {
        let units = (value_us << 20) / 1_000_000;
        if units <= 1 {
            return 0;
        }
        let k = 64 - (units - 1).leading_zeros() as usize;
        k.min(HIST_BUCKETS - 1)
    }

    pub fn record(&mut self, value_us: u64) {
        self.count += 1;
        self.sum_us += value_us;
        self.buckets[Self::bucket_of_us(value_us)] += 1;
    }

    pub fn add(&mut self, other: &Log2Histogram) {
        self.count += other.count;
        self.sum_us += other.sum_us;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64)
    }

    /// Upper bound in seconds of the bucket holding quantile `q` (0..=1): accurate to a factor
    /// of two.
    pub fn quantile_upper_seconds(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (k, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::bucket_upper_seconds(k));
            }
        }
        None
    }

    /// A quantile in seconds, interpolated log-linearly inside the power-of-two bucket that
    /// holds it (bucket bounds alone would move only in factors of two).
    pub fn quantile_seconds(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0.0;
        for (k, n) in self.buckets.iter().enumerate() {
            let n = *n as f64;
            if n > 0.0 && seen + n >= rank {
                let upper = Self::bucket_upper_seconds(k);
                let lower = upper / 2.0;
                let fraction = ((rank - seen) / n).clamp(0.0, 1.0);
                return Some(lower * (upper / lower).powf(fraction));
            }
            seen += n;
        }
        None
    }

    /// `self - earlier`, field by field, for a histogram that only grows.
    pub fn saturating_sub(&self, earlier: &Log2Histogram) -> Log2Histogram {
        let mut out = Log2Histogram {
            count: self.count.saturating_sub(earlier.count),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            ..Default::default()
        };
        for (k, slot) in out.buckets.iter_mut().enumerate() {
            *slot = self.buckets[k].saturating_sub(earlier.buckets[k]);
        }
        out
    }
}

/// Who owns the sockets of a pair, as last seen. pid and comm are known for client connects
/// (recorded in the connecting process); the cgroup for every socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Owner {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
}

impl Owner {
    /// Takes what `newer` knows, keeping what it doesn't.
    pub fn update(&mut self, newer: &Owner) {
        if newer.pid.is_some() {
            self.pid = newer.pid;
            self.comm.clone_from(&newer.comm);
        }
        if newer.cgroup_id.is_some() {
            self.cgroup_id = newer.cgroup_id;
        }
    }
}

/// Everything counted for one flow pair. Used both for one poll's deltas and for running totals:
/// every field but `active` is additive.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FlowCounters {
    /// Application bytes acknowledged by the peer (SYN and FIN excluded).
    pub bytes_sent: u64,
    /// Application bytes received in order (SYN and FIN excluded).
    pub bytes_received: u64,
    /// Segments carrying data, retransmissions included.
    pub segs_sent: u64,
    pub segs_received: u64,
    /// Retransmitted segments, by [`Phase`].
    pub retrans: [u64; 3],
    /// Retransmission timer expiries, by [`Phase`].
    pub rto: [u64; 3],
    /// Connections whose handshake completed.
    pub conn_established: u64,
    /// Established connections that ended with FINs.
    pub conn_closed: u64,
    /// Established connections that ended with a reset (sent or received).
    pub conn_reset: u64,
    /// Connection attempts that failed, by [`ConnectFailure`].
    pub conn_failed: [u64; 4],
    /// Client side: time from connect() to established.
    pub connect_duration: Log2Histogram,
    /// Smoothed RTT samples: one at each close and one per live socket per walk.
    pub rtt: Log2Histogram,
    /// The receiver's RTT estimate (`tcpi_rcv_rtt`), sampled where `rtt` is: how long the data
    /// coming in takes, queueing on the way here included.
    pub rtt_receiver: Log2Histogram,
    /// Established connections seen alive by the last walk (a gauge, not additive).
    pub active: u64,
}

impl FlowCounters {
    pub fn retransmits(&self, phase: Phase) -> u64 {
        self.retrans[phase as usize]
    }

    pub fn timeouts(&self, phase: Phase) -> u64 {
        self.rto[phase as usize]
    }

    pub fn failed(&self, why: ConnectFailure) -> u64 {
        self.conn_failed[why as usize]
    }

    pub fn retrans_total(&self) -> u64 {
        self.retrans.iter().sum()
    }

    pub fn rto_total(&self) -> u64 {
        self.rto.iter().sum()
    }

    pub fn failed_total(&self) -> u64 {
        self.conn_failed.iter().sum()
    }

    /// True when the delta carries any event (a gauge alone is not activity).
    pub fn has_activity(&self) -> bool {
        let mut additive = self.clone();
        additive.active = 0;
        additive != FlowCounters::default()
    }

    /// `self - earlier` for the additive fields of two snapshots of growing totals; `active`
    /// keeps `self`'s value.
    pub fn saturating_sub(&self, earlier: &FlowCounters) -> FlowCounters {
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        FlowCounters {
            bytes_sent: sub(self.bytes_sent, earlier.bytes_sent),
            bytes_received: sub(self.bytes_received, earlier.bytes_received),
            segs_sent: sub(self.segs_sent, earlier.segs_sent),
            segs_received: sub(self.segs_received, earlier.segs_received),
            retrans: std::array::from_fn(|i| sub(self.retrans[i], earlier.retrans[i])),
            rto: std::array::from_fn(|i| sub(self.rto[i], earlier.rto[i])),
            conn_established: sub(self.conn_established, earlier.conn_established),
            conn_closed: sub(self.conn_closed, earlier.conn_closed),
            conn_reset: sub(self.conn_reset, earlier.conn_reset),
            conn_failed: std::array::from_fn(|i| sub(self.conn_failed[i], earlier.conn_failed[i])),
            connect_duration: self.connect_duration.saturating_sub(&earlier.connect_duration),
            rtt: self.rtt.saturating_sub(&earlier.rtt),
            rtt_receiver: self.rtt_receiver.saturating_sub(&earlier.rtt_receiver),
            active: self.active,
        }
    }

    /// What was counted since `earlier` (everything, when there was no earlier snapshot).
    pub fn since(&self, earlier: Option<&FlowCounters>) -> FlowCounters {
        match earlier {
            Some(earlier) => self.saturating_sub(earlier),
            None => self.clone(),
        }
    }

    /// Adds the additive fields of `delta`; `active` is not touched.
    pub fn add(&mut self, delta: &FlowCounters) {
        self.bytes_sent += delta.bytes_sent;
        self.bytes_received += delta.bytes_received;
        self.segs_sent += delta.segs_sent;
        self.segs_received += delta.segs_received;
        for i in 0..3 {
            self.retrans[i] += delta.retrans[i];
            self.rto[i] += delta.rto[i];
        }
        self.conn_established += delta.conn_established;
        self.conn_closed += delta.conn_closed;
        self.conn_reset += delta.conn_reset;
        for i in 0..4 {
            self.conn_failed[i] += delta.conn_failed[i];
        }
        self.connect_duration.add(&delta.connect_duration);
        self.rtt.add(&delta.rtt);
        self.rtt_receiver.add(&delta.rtt_receiver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_bpf_side() {
        // units of 2^-20 s: 1 us = 1.05 units; bucket k holds (2^(k-1), 2^k] units
        assert_eq!(Log2Histogram::bucket_of_us(0), 0);
        assert_eq!(Log2Histogram::bucket_of_us(1), 0);
        assert_eq!(Log2Histogram::bucket_of_us(2), 1);
        assert_eq!(Log2Histogram::bucket_of_us(3), 2);
        assert_eq!(Log2Histogram::bucket_of_us(4), 2);
        assert_eq!(Log2Histogram::bucket_of_us(5), 3);
        // 977 us is 1024.5 units, truncated to 1024; 978 us is 1025.5
        assert_eq!(Log2Histogram::bucket_of_us(977), 10);
        assert_eq!(Log2Histogram::bucket_of_us(978), 11);
        assert_eq!(Log2Histogram::bucket_of_us(u64::MAX >> 21), HIST_BUCKETS - 1);
        // bucket 21 ends at exactly 2 s: OpenTelemetry index 0 at scale 0 is (1, 2] s
        assert_eq!(Log2Histogram::bucket_upper_seconds(21), 2.0);
        assert_eq!(21 + Log2Histogram::OTEL_INDEX_OFFSET, 0);
    }

    #[test]
    fn quantiles_report_bucket_upper_bounds() {
        let mut h = Log2Histogram::default();
        for v in [10, 20, 30, 40, 1000] {
            h.record(v);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_us, 1100);
        // 30 us is 31.5 units: bucket 5, up to 32 units = 30.5 us
        assert_eq!(h.quantile_upper_seconds(0.5), Some(32.0 / 1_048_576.0));
        // 1000 us is 1048 units: bucket 11, up to 2048 units
        assert_eq!(h.quantile_upper_seconds(1.0), Some(2048.0 / 1_048_576.0));
        assert_eq!(Log2Histogram::default().quantile_upper_seconds(0.5), None);
    }

    #[test]
    fn add_sums_additive_fields_and_leaves_the_gauge() {
        let mut total = FlowCounters {
            active: 3,
            ..Default::default()
        };
        let delta = FlowCounters {
            bytes_sent: 10,
            retrans: [1, 2, 3],
            conn_failed: [0, 1, 0, 0],
            active: 7,
            ..Default::default()
        };
        total.add(&delta);
        total.add(&delta);
        assert_eq!(total.bytes_sent, 20);
        assert_eq!(total.retrans, [2, 4, 6]);
        assert_eq!(total.failed(ConnectFailure::Timeout), 2);
        assert_eq!(total.active, 3);
    }

    #[test]
    fn subtraction_undoes_addition() {
        let mut h = Log2Histogram::default();
        h.record(100);
        let earlier = FlowCounters {
            bytes_sent: 5,
            rto: [1, 0, 0],
            ..Default::default()
        };
        let delta = FlowCounters {
            bytes_sent: 7,
            rto: [0, 2, 0],
            rtt: h,
            active: 4,
            ..Default::default()
        };
        let mut later = earlier.clone();
        later.add(&delta);
        later.active = 4;
        assert_eq!(later.saturating_sub(&earlier), delta);
        assert_eq!(
            earlier.saturating_sub(&later).bytes_sent,
            0,
            "saturates instead of wrapping"
        );
    }

    #[test]
    fn a_gauge_alone_is_not_activity() {
        assert!(!FlowCounters {
            active: 2,
            ..Default::default()
        }
        .has_activity());
        assert!(FlowCounters {
            segs_received: 1,
            ..Default::default()
        }
        .has_activity());
    }
}
