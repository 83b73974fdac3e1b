/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one definition of every type shared between the BPF programs and user space.
 * Rust sees these through the skeleton's BTF-generated types; never mirror them by hand.
 * Fields are ordered largest first so that no padding hides in the middle.
 */
#ifndef __FLOWTEL_H
#define __FLOWTEL_H

/* Every limit, defined once: the BPF maps are sized from these and user space reads the same
 * values from the skeleton's BTF types (sampler/mod.rs), so C and Rust cannot disagree. */
enum flowtel_limit {
	/* Log2 RTT/connect-duration buckets in units of 2^-20 s (0.954 us): bucket 0 holds up to
	 * one unit, bucket k holds (2^(k-1), 2^k] units, which is OpenTelemetry's base-2
	 * exponential bucket k-21 at scale 0 in seconds. */
	FLOWTEL_HIST_BUCKETS = 32,
	/* Pair-map entries per poll by default (sampler.pair_map_capacity resizes it at load). */
	FLOWTEL_PAIR_MAP_ENTRIES = 8192,
	/* Listening sockets remembered per walk by default (sampler.listener_map_capacity). */
	FLOWTEL_LISTENER_MAP_ENTRIES = 4096,
	/* NAT-destination prefixes (ClusterIPs, configured CIDRs). */
	FLOWTEL_NAT_DESTINATION_ENTRIES = 16384,
	/* Slots of nat_peers by default (nat.peer_map_capacity, rounded up to a power of two): a
	 * quarter as many live DNATed client connections make a miss unlikely. */
	FLOWTEL_NAT_PEER_ENTRIES = 65536,
	/* Slots a cookie may use in nat_peers, from its hashed one on: a connection whose run is
	 * all taken is counted (FLOWTEL_CTR_NAT_UNSTORED). */
	FLOWTEL_NAT_PROBES = 8,
	/* DNS payload bytes handed up per answer; a longer one is handed up cut short and counted
	 * by user space (dns_too_long). Covers EDNS(0)'s usual 1232- and 4096-byte limits. */
	FLOWTEL_DNS_CAPTURE_BYTES = 4096,
	/* The DNS answer ring buffer's default size (dns.ring_buffer_bytes resizes it at load). */
	FLOWTEL_DNS_RING_BYTES = 1048576,
};

enum flowtel_role {
	FLOWTEL_ROLE_CLIENT = 1,
	FLOWTEL_ROLE_SERVER = 2,
};

enum flowtel_phase {
	FLOWTEL_PHASE_SYN = 0,
	FLOWTEL_PHASE_ESTABLISHED = 1,
	FLOWTEL_PHASE_CLOSE = 2,
	FLOWTEL_PHASES = 3,
};

enum flowtel_failure {
	FLOWTEL_FAIL_REFUSED = 0,
	FLOWTEL_FAIL_TIMEOUT = 1,
	FLOWTEL_FAIL_RESET = 2,
	FLOWTEL_FAIL_UNREACHABLE = 3,
	FLOWTEL_FAILURES = 4,
};

/* Agent counters: a per-CPU array indexed by this enum, cumulative since load. */
enum flowtel_counter {
	/* a fold found the pair map full and went into the overflow bucket (nothing lost) */
	FLOWTEL_CTR_PAIR_MAP_FULL = 0,
	/* the walk could not create per-socket storage: that socket is folded whole at close */
	FLOWTEL_CTR_SOCK_STORAGE_FAILED = 1,
	/* a listener could not be remembered: a pre-existing socket may get role client */
	FLOWTEL_CTR_LISTENER_MAP_FULL = 2,
	/* sockets visited by the walk (established, in the target cgroup) */
	FLOWTEL_CTR_WALK_SOCKETS = 3,
	/* a close callback could not resolve the tcp_sock (never expected) */
	FLOWTEL_CTR_NO_TCP_SOCK = 4,
	/* client connections whose SYN showed DNAT: keyed by the real peer, in the kernel */
	FLOWTEL_CTR_NAT_REVERSED = 5,
	/* a DNATed SYN whose real peer could not be stored (its run of nat_peers slots all taken):
	 * the connection stays under the address it connected to */
	FLOWTEL_CTR_NAT_UNSTORED = 6,
	/* connections that predate the agent, to a destination that may be DNATed: keyed with their
	 * client port for user space's conntrack lookup */
	FLOWTEL_CTR_NAT_PREEXISTING = 7,
	/* a DNS answer found the ring buffer full and was not handed up (dns.ring_buffer_bytes) */
	FLOWTEL_CTR_DNS_RING_FULL = 8,
	/* a packet from port 53 that could not be read (never expected) */
	FLOWTEL_CTR_DNS_CAPTURE_FAILED = 9,
	FLOWTEL_COUNTERS = 10,
};

/* A flow pair: connections collapsed by dropping the client's ephemeral port. */
struct flowtel_pair_key {
	__u8 local_addr[16];  /* IPv4 in the first 4 bytes, network order */
	__u8 remote_addr[16]; /* the real peer: after DNAT, the backend */
	/* zero, unless DNAT sent the connection elsewhere: the address the client connected to */
	__u8 original_addr[16];
	__u16 service_port;   /* host order: the server's port (the backend's, after DNAT) */
	__u16 original_port;  /* host order; with original_addr */
	__u8 family;          /* 4 or 6; v4-mapped IPv6 is folded to 4 */
	__u8 role;            /* enum flowtel_role */
	/* 0, except for a connection the kernel did not see open (it predates the agent) to a
	 * destination that may be DNATed: its own port, so that user space can find it in
	 * conntrack and key it by the real peer */
	__u16 client_port;
};

/* A destination prefix that may be DNATed: a connection to it that predates the agent is
 * reversed by user space through conntrack. IPv4 is stored v4-mapped (::ffff:a.b.c.d, prefix
 * length + 96). */
struct flowtel_nat_prefix {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Deltas folded into a pair during one poll interval. */
struct flowtel_pair_stats {
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 segs_sent;
	__u64 segs_received;
	__u64 retrans[FLOWTEL_PHASES];
	__u64 rto[FLOWTEL_PHASES];
	__u64 conn_established;
	__u64 conn_closed;
	__u64 conn_reset;
	__u64 conn_failed[FLOWTEL_FAILURES];
	__u64 connect_count;
	__u64 connect_sum_us;
	__u64 rtt_count;
	__u64 rtt_sum_us;
	/* receiver-side RTT estimates (tcp_sock.rcv_rtt_est, TCP_INFO's tcpi_rcv_rtt) */
	__u64 rcv_rtt_count;
	__u64 rcv_rtt_sum_us;
	/* established sockets seen by the walk that ended this interval (a gauge) */
	__u64 active;
	/* last writer wins: the owner seen most recently on this CPU */
	__u64 cgroup_id;
	__u32 pid;
	__u32 connect_hist[FLOWTEL_HIST_BUCKETS];
	__u32 rtt_hist[FLOWTEL_HIST_BUCKETS];
	__u32 rcv_rtt_hist[FLOWTEL_HIST_BUCKETS];
	char comm[16];
};

/* What the walk already reported for a live socket (sk_storage, created only by the walk). */
struct flowtel_sock_reported {
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 segs_sent;
	__u64 segs_received;
	/* only for sockets our sock_ops never saw (opened before the agent): no RETRANS_CB on them */
	__u64 retrans;
	__u32 rto;
	/* 1 once conn_established was counted for this socket */
	__u32 established_counted;
	/* clients whose SYN was retransmitted: the first SYN's tcp timestamp (retrans_stamp) */
	__u32 syn_start;
	/* 1 once a reset folded the connection (its outcome counted) before tcp_disconnect()
	 * zeroed the counters; cleared when the socket connects again */
	__u32 folded;
};

/* What NAT reversal knows of one live client connection (nat_peers, by socket cookie). */
struct flowtel_nat_peer {
	/* the real peer, as the SYN left after DNAT (key layout: IPv4 in the first 4 bytes) */
	__u8 addr[16];
	__u16 port;   /* host order; 0 when the peer is not known */
	/* 1: a connection that predates the agent to a possible DNAT destination, keyed with its
	 * client port for user space's conntrack lookup */
	__u16 lookup;
};

/* One slot of nat_peers: the socket cookie of the connection it holds (0: free) and what NAT
 * reversal knows of that connection. */
struct flowtel_nat_slot {
	__u64 cookie;
	struct flowtel_nat_peer peer;
};

struct flowtel_listener_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

/* One DNS message (or TCP segment of one) from port 53, as a socket of the cgroup received it.
 * Only the first captured_len bytes of payload travel through the ring buffer. */
struct flowtel_dns_event {
	/* the receiving socket's cgroup: whose resolution this was */
	__u64 cgroup_id;
	/* the answering server and the receiving client (key layout: IPv4 in the first 4 bytes) */
	__u8 server[16];
	__u8 client[16];
	/* TCP: the segment's sequence number, for reassembly; 0 for UDP */
	__u32 tcp_seq;
	/* the payload's length on the wire; more than captured_len when cut short */
	__u32 wire_len;
	__u16 captured_len;
	__u16 client_port;  /* host order */
	__u8 transport;     /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 ipv6;
	__u8 pad[2];
	__u8 payload[FLOWTEL_DNS_CAPTURE_BYTES];
};

#endif /* __FLOWTEL_H */
