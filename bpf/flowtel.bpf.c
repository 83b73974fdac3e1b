// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * flowtel's kernel side: per-connection TCP statistics folded into flow pairs.
 *
 * Cost model (see ../shared/kernel-notes.md): no per-socket memory for short connections and no
 * ring buffer. A socket's counters are folded into a per-CPU hash keyed by flow pair when it
 * closes; retransmits and RTOs are folded when they happen; only sockets that live across a
 * periodic iter/tcp walk get per-socket storage, which records what was already reported.
 *
 * The pair map is double-buffered through a one-slot ARRAY_OF_MAPS: user space swaps the inner
 * map (the kernel waits for an RCU grace period on that update), then drains the inactive one.
 * No update can race the drain, so every fold lands in exactly one interval.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "flowtel.h"

#define AF_INET 2
#define AF_INET6 10

#define ECONNRESET 104
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define EPIPE 32
#define EHOSTUNREACH 113
#define ENETUNREACH 101

#define SOL_TCP 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* Callback flags every socket we track gets. RTO and RETRANS fire only on loss events: they
 * give the exact phase of each retransmit without per-socket memory. They also mark the socket
 * as ours (in the attached cgroup) for the close fold, which runs once per socket on the
 * tcp_destroy_sock tracepoint: a STATE_CB flag would cost eight sock_ops calls per connection,
 * more than the fold itself (docs/performance.md). */
#define FLOWTEL_CB_TRACKED (BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG)
/* A client's handshake only: a failed connect is classified at its SYN_SENT -> CLOSE transition,
 * while the error is still on the socket (connect() hands it to the application and clears it
 * before the socket is destroyed). Cleared at ACTIVE_ESTABLISHED: one STATE_CB call per
 * successful connection. */
#define FLOWTEL_CB_HANDSHAKE BPF_SOCK_OPS_STATE_CB_FLAG

#define SEND_SHUTDOWN 2
/* Marks a socket as the client end, for free: this callback only fires for packets that carry a
 * TCP option the kernel does not know, which normal traffic never does. */
#define FLOWTEL_CB_CLIENT_MARK BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG

/* Knobs, set by user space before load. */
const volatile bool flowtel_per_ack_rtt = false;
/* 0: every socket; otherwise the walk keeps only sockets below this cgroup (sock_ops is already
 * scoped by its attach point). */
const volatile __u64 flowtel_cgroup_id = 0;
const volatile __u32 flowtel_cgroup_level = 0;
/* NAT reversal on: the cgroup_skb egress program records a DNATed client's real peer from its
 * SYN, and every client key names that peer (and the original address); connections that
 * predate the agent to destinations in nat_destinations keep their client port instead. */
const volatile bool flowtel_nat = false;
const volatile __u32 flowtel_nat_slot_mask = 0;

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct flowtel_pairs_inner {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FLOWTEL_PAIR_MAP_ENTRIES);
	__type(key, struct flowtel_pair_key);
	__type(value, struct flowtel_pair_stats);
} pairs_a SEC(".maps"), pairs_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct flowtel_pairs_inner);
} pairs_active SEC(".maps") = {
	.values = { &pairs_a },
};

/* Folds that found the pair map full: cumulative, never drained. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flowtel_pair_stats);
} overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOWTEL_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* One entry per live socket that a walk has seen; freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flowtel_sock_reported);
} sock_reported SEC(".maps");

/* Listening ports seen earlier in the current walk, to give sockets that predate the agent a
 * role. Cleared by user space after every walk. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FLOWTEL_LISTENER_MAP_ENTRIES);
	__type(key, struct flowtel_listener_key);
	__type(value, __u8);
} listeners SEC(".maps");

/* Destinations that may be DNATed (Kubernetes ClusterIPs, configured CIDRs), filled by user
 * space. Read by the walk, only when flowtel_nat is set, for connections it meets first. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FLOWTEL_NAT_DESTINATION_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flowtel_nat_prefix);
	__type(value, __u8);
} nat_destinations SEC(".maps");

/* The real peer of each live DNATed client connection, by socket cookie: written by the SYN's
 * egress program, read by every later key of the socket, cleared when it is destroyed. Only
 * DNATed connections (and ones that predate the agent to NAT destinations) have an entry.
 * An open-addressed table in an array (nat_slot): a slot is taken with one compare-and-swap and
 * given back with one exchange, where a hash map's update and delete each took a bucket lock and
 * its free list (docs/performance.md). Sized at load to a power of two (1 when NAT reversal is
 * off); flowtel_nat_slot_mask is that size less one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FLOWTEL_NAT_PEER_ENTRIES);
	__type(key, __u32);
	__type(value, struct flowtel_nat_slot);
} nat_peers SEC(".maps");

/* Source of zeroes for new pair entries: the value is too large for the BPF stack. */
const struct flowtel_pair_stats flowtel_zero_stats = {};

/* Gives the skeleton Rust types for the structs that no map names as key or value. */
struct flowtel_sock_reported flowtel_type_sock_reported = {};
struct flowtel_listener_key flowtel_type_listener_key = {};
struct flowtel_nat_prefix flowtel_type_nat_prefix = {};
struct flowtel_nat_peer flowtel_type_nat_peer = {};
enum flowtel_counter flowtel_type_counter = FLOWTEL_COUNTERS;
enum flowtel_failure flowtel_type_failure = FLOWTEL_FAILURES;
enum flowtel_phase flowtel_type_phase = FLOWTEL_PHASES;
enum flowtel_role flowtel_type_role = FLOWTEL_ROLE_CLIENT;
enum flowtel_limit flowtel_type_limit = FLOWTEL_HIST_BUCKETS;

static __always_inline void count(__u32 counter)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &counter);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline struct flowtel_pair_stats *overflow_stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&overflow, &zero);
}

/* Pair-map swaps so far; the low bit names the map that takes folds (0: pairs_a, 1: pairs_b).
 * User space increments it, then updates the one-slot outer map pairs_active, which returns
 * only after an RCU grace period: from then on no program still folds into the map it drains.
 * Naming the two maps directly, instead of looking the active one up in pairs_active, lets the
 * verifier inline the lookups. One word, read once, gives both the map and its generation. */
volatile __u32 flowtel_swaps = 0;

/* The one lookup-or-init for the pair maps: the entry for `key`, created zeroed if missing.
 * -EEXIST from the update means another context inserted it first: fine, look it up again.
 * NULL only when the map is full. Inlined per map, so that each lookup names one map and the
 * verifier can inline it. */
static __always_inline struct flowtel_pair_stats *lookup_or_init(void *map, const struct flowtel_pair_key *key)
{
	struct flowtel_pair_stats *stats = bpf_map_lookup_elem(map, key);

	if (stats)
		return stats;
	bpf_map_update_elem(map, key, &flowtel_zero_stats, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* The key's entry in the pair map of generation `swaps`; the overflow bucket when it is full. */
static __noinline struct flowtel_pair_stats *pair_stats_at(const struct flowtel_pair_key *key, __u32 swaps)
{
	struct flowtel_pair_stats *stats;

	if (swaps & 1)
		stats = lookup_or_init(&pairs_b, key);
	else
		stats = lookup_or_init(&pairs_a, key);
	if (stats)
		return stats;
	count(FLOWTEL_CTR_PAIR_MAP_FULL);
	return overflow_stats();
}

/* The key's entry in the active pair map; the overflow bucket when it is full. */
static __always_inline struct flowtel_pair_stats *pair_stats(const struct flowtel_pair_key *key)
{
	return pair_stats_at(key, flowtel_swaps);
}

/* ceil(log2(v)) clamped to the bucket range: bucket k holds (2^(k-1), 2^k]. */
static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0;

	if (v <= 1)
		return 0;
	v -= 1;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	r += 1;
	return r < FLOWTEL_HIST_BUCKETS ? r : FLOWTEL_HIST_BUCKETS - 1;
}

/* Microseconds into the histogram's 2^-20 s units (see FLOWTEL_HIST_BUCKETS). */
static __always_inline __u32 hist_bucket_us(__u64 us)
{
	return log2_bucket((us << 20) / 1000000);
}

/* One RTT sample, x8 as the kernel keeps srtt and the receiver's estimate, into a count, a sum
 * and a histogram of the pair. */
static __always_inline void add_rtt_sample(__u64 *count, __u64 *sum, __u32 *hist, __u32 rtt_us_x8)
{
	__u32 rtt_us = rtt_us_x8 >> 3;

	if (!rtt_us_x8)
		return;
	__sync_fetch_and_add(count, 1);
	__sync_fetch_and_add(sum, rtt_us);
	__sync_fetch_and_add(&hist[hist_bucket_us(rtt_us)], 1);
}

static __always_inline void add_rtt(struct flowtel_pair_stats *s, __u32 srtt_us_x8)
{
	add_rtt_sample(&s->rtt_count, &s->rtt_sum_us, s->rtt_hist, srtt_us_x8);
}

/* The receiver's RTT estimate: what a host that mostly receives sees of the path its data comes
 * over, queueing included. Zero until the socket has received enough data. */
static __always_inline void add_rcv_rtt(struct flowtel_pair_stats *s, __u32 rtt_us_x8)
{
	add_rtt_sample(&s->rcv_rtt_count, &s->rcv_rtt_sum_us, s->rcv_rtt_hist, rtt_us_x8);
}

/* The cheap default: srtt at close and per walk. With per-ACK samples on, those are the only
 * samples, so that one histogram holds one kind of value. */
static __always_inline void add_srtt(struct flowtel_pair_stats *s, __u32 srtt_us_x8)
{
	if (!flowtel_per_ack_rtt)
		add_rtt(s, srtt_us_x8);
}

static __always_inline bool is_v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* Whether the key's remote address is in nat_destinations. */
static __noinline bool nat_destination(const struct flowtel_pair_key *key)
{
	struct flowtel_nat_prefix p = { .prefixlen = 128 };

	if (key->family == 6) {
		__builtin_memcpy(p.addr, key->remote_addr, 16);
	} else {
		p.addr[10] = 0xff;
		p.addr[11] = 0xff;
		__builtin_memcpy(&p.addr[12], key->remote_addr, 4);
	}
	return bpf_map_lookup_elem(&nat_destinations, &p) != NULL;
}

/* Fills a zeroed key. Addresses arrive as four network-order words each. `nat` is what NAT
 * reversal knows of the socket, if anything. */
static __always_inline void build_key(struct flowtel_pair_key *key, __u32 family, const __u32 l6[4],
				      const __u32 r6[4], __u32 l4, __u32 r4, __u16 lport,
				      __u16 rport, __u8 role, const struct flowtel_nat_peer *nat)
{
	if (family == AF_INET6 && !(is_v4_mapped(l6) && is_v4_mapped(r6))) {
		key->family = 6;
		__builtin_memcpy(key->local_addr, l6, 16);
		__builtin_memcpy(key->remote_addr, r6, 16);
	} else {
		key->family = 4;
		if (family == AF_INET6) {
			l4 = l6[3];
			r4 = r6[3];
		}
		__builtin_memcpy(key->local_addr, &l4, 4);
		__builtin_memcpy(key->remote_addr, &r4, 4);
	}
	key->role = role;
	key->service_port = role == FLOWTEL_ROLE_CLIENT ? rport : lport;
	if (!nat || role != FLOWTEL_ROLE_CLIENT)
		return;
	if (nat->port) {
		/* DNATed: the peer is the backend its SYN went to; the address asked for is kept */
		__builtin_memcpy(key->original_addr, key->remote_addr, 16);
		key->original_port = key->service_port;
		__builtin_memcpy(key->remote_addr, nat->addr, 16);
		key->service_port = nat->port;
	} else if (nat->lookup) {
		key->client_port = lport;
	}
}

/* The socket's cookie if it has one yet, without making one: only a socket with an entry in
 * nat_peers is sure to have one, and making a cookie for every other socket costs. */
static __always_inline __u64 cookie_if_any(const struct sock *sk)
{
	return sk ? sk->__sk_common.skc_cookie.counter : 0;
}

/* A cookie's slots in nat_peers: FLOWTEL_NAT_PROBES in a row from its hashed one. Socket cookies
 * count up, so a burst of connections would otherwise fill one run; the multiplicative hash
 * spreads them out. */
static __always_inline __u32 nat_slot_index(__u64 cookie, __u32 probe)
{
	return ((__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32) + probe) & flowtel_nat_slot_mask;
}

/* The slot holding the cookie's entry, or NULL. A slot holding a cookie is only ever written
 * by that cookie's socket, under that socket's lock (another socket can only take a free slot),
 * so a match is that socket's own entry. */
static __always_inline struct flowtel_nat_slot *nat_slot(__u64 cookie)
{
	for (__u32 probe = 0; probe < FLOWTEL_NAT_PROBES; probe++) {
		__u32 index = nat_slot_index(cookie, probe);
		struct flowtel_nat_slot *slot = bpf_map_lookup_elem(&nat_peers, &index);

		if (slot && slot->cookie == cookie)
			return slot;
	}
	return NULL;
}

/* The first free slot of the cookie's run, taken with a compare-and-swap against another socket
 * taking it at once; NULL when the run is all taken. For a cookie with no slot yet. */
static __noinline struct flowtel_nat_slot *nat_slot_claim(__u64 cookie)
{
	for (__u32 probe = 0; probe < FLOWTEL_NAT_PROBES; probe++) {
		__u32 index = nat_slot_index(cookie, probe);
		struct flowtel_nat_slot *slot = bpf_map_lookup_elem(&nat_peers, &index);

		if (slot && !slot->cookie && __sync_val_compare_and_swap(&slot->cookie, 0, cookie) == 0)
			return slot;
	}
	return NULL;
}

/* The cookie's slot: its own if it has one, else a new one (nat_slot_claim). */
static __always_inline struct flowtel_nat_slot *nat_slot_take(__u64 cookie)
{
	struct flowtel_nat_slot *slot = nat_slot(cookie);

	return slot ? slot : nat_slot_claim(cookie);
}

/* Gives a slot back. An exchange, not a store: a full barrier, so that this socket's reads of
 * the slot are done before another socket can take it (a plain store may pass earlier loads on
 * arm64). */
static __always_inline void nat_slot_release(struct flowtel_nat_slot *slot)
{
	__sync_lock_test_and_set(&slot->cookie, 0);
}

/* Frees the cookie's slot, if it has one. */
static __always_inline void nat_slot_free(__u64 cookie)
{
	struct flowtel_nat_slot *slot = cookie ? nat_slot(cookie) : NULL;

	if (slot)
		nat_slot_release(slot);
}

/* What NAT reversal knows of a client socket, by its cookie; NULL when it is off, for servers,
 * and for the sockets it knows nothing of (nearly all of them, most without a cookie). */
static __always_inline struct flowtel_nat_peer *nat_peer(__u64 cookie, __u8 role)
{
	struct flowtel_nat_slot *slot;

	if (!flowtel_nat || role != FLOWTEL_ROLE_CLIENT || !cookie)
		return NULL;
	slot = nat_slot(cookie);
	return slot ? &slot->peer : NULL;
}

static __noinline void key_from_sock_ops(struct bpf_sock_ops *ctx, struct flowtel_pair_key *key,
					      __u8 role)
{
	__u32 l6[4], r6[4], family, l4, r4, lport, rport;
	struct flowtel_nat_peer *nat = NULL;

	/* One constant-offset ctx load per field, pinned, before any branch: clang would otherwise
	 * merge the v4/v6 loads into a computed ctx pointer, which the verifier rejects. */
	family = ctx->family;
	l4 = ctx->local_ip4;
	r4 = ctx->remote_ip4;
	l6[0] = ctx->local_ip6[0];
	l6[1] = ctx->local_ip6[1];
	l6[2] = ctx->local_ip6[2];
	l6[3] = ctx->local_ip6[3];
	r6[0] = ctx->remote_ip6[0];
	r6[1] = ctx->remote_ip6[1];
	r6[2] = ctx->remote_ip6[2];
	r6[3] = ctx->remote_ip6[3];
	lport = ctx->local_port;
	rport = ctx->remote_port;
	barrier_var(family);
	barrier_var(l4);
	barrier_var(r4);
	barrier_var(lport);
	barrier_var(rport);
	if (flowtel_nat && role == FLOWTEL_ROLE_CLIENT) {
		struct bpf_sock *bsk = ctx->sk;

		if (bsk)
			nat = nat_peer(cookie_if_any((struct sock *)bpf_skc_to_tcp_sock(bsk)), role);
	}
	/* local_port is host order; remote_port is network order in the upper half */
	build_key(key, family, l6, r6, l4, r4, (__u16)lport, (__u16)bpf_ntohl(rport), role, nat);
}

static __always_inline __u8 role_of_flags(__u32 cb_flags)
{
	return (cb_flags & FLOWTEL_CB_CLIENT_MARK) ? FLOWTEL_ROLE_CLIENT : FLOWTEL_ROLE_SERVER;
}

static __always_inline bool our_fin_sent(__u32 state)
{
	return state == BPF_TCP_FIN_WAIT1 || state == BPF_TCP_FIN_WAIT2 ||
	       state == BPF_TCP_CLOSING || state == BPF_TCP_LAST_ACK;
}

/* syn: handshake; established: data may flow both ways (CLOSE_WAIT included: we can still
 * send); close: after our FIN. */
static __always_inline __u32 phase_of_state(__u32 state)
{
	if (state == BPF_TCP_SYN_SENT || state == BPF_TCP_SYN_RECV)
		return FLOWTEL_PHASE_SYN;
	if (our_fin_sent(state))
		return FLOWTEL_PHASE_CLOSE;
	return FLOWTEL_PHASE_ESTABLISHED;
}

struct app_counts {
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 segs_sent;
	__u64 segs_received;
};

/* Application bytes: the kernel's byte counters also count the SYN and FIN sequence slots.
 * bytes_acked includes the client's own SYN and, once acked, our FIN; bytes_received includes
 * the peer's FIN (SOCK_DONE marks that it arrived). */
static __always_inline void app_counts(struct tcp_sock *tp, bool fin_sent, __u8 role,
				       struct app_counts *out)
{
	__u64 acked = tp->bytes_acked;
	__u64 received = tp->bytes_received;
	unsigned long sk_flags = tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags;

	if (role == FLOWTEL_ROLE_CLIENT && acked > 0)
		acked -= 1;
	if (fin_sent && tp->snd_una == tp->write_seq && acked > 0)
		acked -= 1;
	if ((sk_flags & (1UL << SOCK_DONE)) && received > 0)
		received -= 1;
	out->bytes_sent = acked;
	out->bytes_received = received;
	out->segs_sent = tp->data_segs_out;
	out->segs_received = tp->data_segs_in;
}

static __always_inline __u64 delta(__u64 now, __u64 *reported)
{
	__u64 d = 0;

	if (now > *reported) {
		d = now - *reported;
		*reported = now;
	}
	return d;
}

static __always_inline void add_counts(struct flowtel_pair_stats *s, const struct app_counts *c)
{
	if (c->bytes_sent)
		__sync_fetch_and_add(&s->bytes_sent, c->bytes_sent);
	if (c->bytes_received)
		__sync_fetch_and_add(&s->bytes_received, c->bytes_received);
	if (c->segs_sent)
		__sync_fetch_and_add(&s->segs_sent, c->segs_sent);
	if (c->segs_received)
		__sync_fetch_and_add(&s->segs_received, c->segs_received);
}

static __always_inline __u64 sock_cgroup_id(struct sock *sk)
{
	/* BTF pointer loads: inline, unlike bpf_probe_read_kernel calls */
	struct cgroup *cgrp = sk->sk_cgrp_data.cgroup;

	return cgrp ? cgrp->kn->id : 0;
}

/* The helper assigns the flags word, shared with any other sock_ops program on the socket:
 * keep theirs. */
static __always_inline void track(struct bpf_sock_ops *ctx, __u32 extra)
{
	__u32 flags = ctx->bpf_sock_ops_cb_flags | FLOWTEL_CB_TRACKED | extra;

	if (flowtel_per_ack_rtt)
		flags |= BPF_SOCK_OPS_RTT_CB_FLAG;
	bpf_sock_ops_cb_flags_set(ctx, flags);
}

/* The last owner this CPU noted, and where: a process that connects to one pair again and
 * again (the usual case) skips the pair lookup. One per-CPU slot, never full. */
struct flowtel_owner_noted {
	struct flowtel_pair_key key;
	__u32 pid;
	__u32 swaps;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flowtel_owner_noted);
} owner_noted SEC(".maps");

static __always_inline bool same_key(const struct flowtel_pair_key *a, const struct flowtel_pair_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	_Static_assert(sizeof(*a) % 8 == 0, "the pair key compares as words");
#pragma unroll
	for (int i = 0; i < sizeof(*a) / 8; i++)
		if (x[i] != y[i])
			return false;
	return true;
}

/* The calling process as the owner of the pair of `key`. Only valid in the process that
 * connects: connect() (and the first SYN, which it sends) is the one moment the owner is known
 * for free. The owner rarely changes between connections of a pair: it is read only when it
 * does, and the pair is not even looked up when this CPU noted the same owner for it in the
 * same pair map. */
static __always_inline void note_owner(const struct flowtel_pair_key *key, struct tcp_sock *tp)
{
	__u32 zero = 0, pid = bpf_get_current_pid_tgid() >> 32, swaps = flowtel_swaps;
	struct flowtel_owner_noted *noted = bpf_map_lookup_elem(&owner_noted, &zero);
	struct flowtel_pair_stats *s;
	struct task_struct *task;

	if (noted && noted->pid == pid && noted->swaps == swaps && same_key(&noted->key, key))
		return;
	s = pair_stats_at(key, swaps);
	if (!s)
		return;
	if (noted) {
		noted->key = *key;
		noted->pid = pid;
		noted->swaps = swaps;
	}
	if (s->pid == pid && s->cgroup_id)
		return;
	s->pid = pid;
	/* the process's name (its main thread's comm), not the calling thread's */
	task = bpf_get_current_task_btf();
	bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), task->group_leader->comm);
	if (tp)
		s->cgroup_id = sock_cgroup_id((struct sock *)tp);
}

static __always_inline void on_connect(struct bpf_sock_ops *ctx)
{
	struct flowtel_pair_key key = {};
	struct bpf_sock *bsk = ctx->sk;
	struct tcp_sock *tp;

	track(ctx, FLOWTEL_CB_CLIENT_MARK | FLOWTEL_CB_HANDSHAKE);
	/* a socket connecting again after tcp_disconnect(), which zeroed its counters: its next
	 * close counts again, from zero, and its peer is the new one */
	tp = bsk ? bpf_skc_to_tcp_sock(bsk) : NULL;
	if (tp) {
		struct flowtel_sock_reported *rep = bpf_sk_storage_get(&sock_reported, tp, 0, 0);

		if (rep) {
			rep->folded = 0;
			rep->bytes_sent = 0;
			rep->bytes_received = 0;
			rep->segs_sent = 0;
			rep->segs_received = 0;
			if (flowtel_nat)
				nat_slot_free(cookie_if_any((struct sock *)tp));
		}
	}
	/* With NAT reversal on, the peer is not known yet: the SYN's egress program names the
	 * owner, once its real destination is known. */
	if (flowtel_nat)
		return;
	/* The tuple is complete here (route and source port are chosen before this callback). */
	key_from_sock_ops(ctx, &key, FLOWTEL_ROLE_CLIENT);
	note_owner(&key, tp);
}

/* Connect duration without per-socket memory: with no SYN retransmit, the first RTT sample
 * (SYN to SYN-ACK) is the connect time and srtt still equals it here. After a SYN retransmit
 * (rare) the first SYN's timestamp was saved at the retransmit, since the kernel clears its own
 * copy (retrans_stamp) when the SYN-ACK arrives. */
static __always_inline __u64 connect_duration_us(struct bpf_sock_ops *ctx, __u32 syn_retrans, __u32 srtt)
{
	struct flowtel_sock_reported *rep;
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	__u64 now;

	if (!syn_retrans)
		return srtt >> 3;
	bsk = ctx->sk;
	tp = bsk ? bpf_skc_to_tcp_sock(bsk) : NULL;
	if (!tp)
		return 0;
	rep = bpf_sk_storage_get(&sock_reported, tp, 0, 0);
	if (!rep || !rep->syn_start)
		return 0;
	now = tp->tcp_mstamp;
	if (bpf_core_field_exists(tp->tcp_usec_ts) && BPF_CORE_READ_BITFIELD(tp, tcp_usec_ts))
		return (__u32)now - rep->syn_start;
	return (__u64)((__u32)(now / 1000) - rep->syn_start) * 1000;
}

/* On a SYN retransmit, keep the first SYN's timestamp for connect_duration_us. */
static __always_inline void save_syn_start(struct bpf_sock_ops *ctx)
{
	struct flowtel_sock_reported *rep;
	struct bpf_sock *bsk = ctx->sk;
	struct tcp_sock *tp = bsk ? bpf_skc_to_tcp_sock(bsk) : NULL;

	if (!tp)
		return;
	rep = bpf_sk_storage_get(&sock_reported, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rep) {
		count(FLOWTEL_CTR_SOCK_STORAGE_FAILED);
		return;
	}
	if (!rep->syn_start)
		rep->syn_start = tp->retrans_stamp;
}

static __always_inline void on_active_established(struct bpf_sock_ops *ctx)
{
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	__u32 syn_retrans = ctx->total_retrans;
	__u32 srtt = ctx->srtt_us;
	__u64 us;

	/* the handshake is over: no more state callbacks for it */
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags & ~FLOWTEL_CB_HANDSHAKE);
	key_from_sock_ops(ctx, &key, FLOWTEL_ROLE_CLIENT);
	s = pair_stats(&key);
	if (!s)
		return;
	__sync_fetch_and_add(&s->conn_established, 1);
	us = connect_duration_us(ctx, syn_retrans, srtt);
	if (us) {
		__sync_fetch_and_add(&s->connect_count, 1);
		__sync_fetch_and_add(&s->connect_sum_us, us);
		__sync_fetch_and_add(&s->connect_hist[hist_bucket_us(us)], 1);
	}
}

static __always_inline void on_passive_established(struct bpf_sock_ops *ctx)
{
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	struct bpf_sock *bsk = ctx->sk;
	__u32 syn_retrans = ctx->total_retrans;
	struct tcp_sock *tp;
	__u32 syn_rto = 0;

	track(ctx, 0);
	/* SYN-ACK retransmits and timeouts happened on the request socket, before any callback
	 * could fire: the child inherits them (total_retrans, total_rto). Rare, so the fold is only
	 * paid then. */
	tp = bsk ? bpf_skc_to_tcp_sock(bsk) : NULL;
	if (tp && bpf_core_field_exists(tp->total_rto))
		syn_rto = tp->total_rto;
	if (!syn_retrans && !syn_rto)
		return;
	key_from_sock_ops(ctx, &key, FLOWTEL_ROLE_SERVER);
	s = pair_stats(&key);
	if (!s)
		return;
	if (syn_retrans)
		__sync_fetch_and_add(&s->retrans[FLOWTEL_PHASE_SYN], syn_retrans);
	if (syn_rto)
		__sync_fetch_and_add(&s->rto[FLOWTEL_PHASE_SYN], syn_rto);
}

/* Adds n to the retransmit (or RTO) counter of the socket's current phase. */
static __always_inline void fold_loss_event(struct bpf_sock_ops *ctx, bool rto, __u32 n)
{
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	__u32 state = ctx->state;
	__u32 cb_flags = ctx->bpf_sock_ops_cb_flags;
	__u32 phase = phase_of_state(state) % FLOWTEL_PHASES;

	key_from_sock_ops(ctx, &key, role_of_flags(cb_flags));
	s = pair_stats(&key);
	if (!s)
		return;
	if (rto)
		__sync_fetch_and_add(&s->rto[phase], n);
	else
		__sync_fetch_and_add(&s->retrans[phase], n);
}

static __always_inline void on_retrans(struct bpf_sock_ops *ctx)
{
	__u32 segs = ctx->args[1];

	/* Every callback counts, whatever args[2] (the transmit error) says: the kernel adds segs
	 * to total_retrans and TcpRetransSegs before it transmits. */
	fold_loss_event(ctx, false, segs);
	if (ctx->state == BPF_TCP_SYN_SENT)
		save_syn_start(ctx);
}

static __always_inline void on_rto(struct bpf_sock_ops *ctx)
{
	/* args[2] set: the socket gives up instead of retransmitting; the kernel counts no RTO */
	if (ctx->args[2])
		return;
	fold_loss_event(ctx, true, 1);
}

static __always_inline void on_rtt(struct bpf_sock_ops *ctx)
{
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	__u32 sample_us = ctx->args[0];
	__u32 cb_flags = ctx->bpf_sock_ops_cb_flags;

	/* args[0] is this ACK's RTT measurement in us (args[1] is srtt) */
	key_from_sock_ops(ctx, &key, role_of_flags(cb_flags));
	s = pair_stats(&key);
	if (s)
		add_rtt(s, sample_us << 3);
}

static __always_inline __u32 failure_of(int sk_err)
{
	switch (sk_err) {
	case ECONNREFUSED:
		return FLOWTEL_FAIL_REFUSED;
	case ECONNRESET:
	case EPIPE:
		return FLOWTEL_FAIL_RESET;
	case EHOSTUNREACH:
	case ENETUNREACH:
		return FLOWTEL_FAIL_UNREACHABLE;
	default:
		/* ETIMEDOUT, or the application gave up before any answer came back */
		return FLOWTEL_FAIL_TIMEOUT;
	}
}

/* The pair key of a full socket through BTF. The local port comes from inet_sport: by the
 * time a socket is destroyed, inet_put_port() has zeroed skc_num. `nat` is what NAT reversal
 * knows of it (nat_peer), if anything. */
static __noinline void key_from_sock(struct sock *sk, struct flowtel_pair_key *key, __u8 role,
				     const struct flowtel_nat_peer *nat)
{
	struct inet_sock *inet = (struct inet_sock *)sk;
	__u32 l6[4] = {}, r6[4] = {};
	__u16 family = sk->__sk_common.skc_family;

	/* IPv6 addresses only for IPv6 sockets: most sockets are IPv4 */
	if (family == AF_INET6) {
		l6[0] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		l6[1] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		l6[2] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		l6[3] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3];
		r6[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		r6[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		r6[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		r6[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	}
	build_key(key, family, l6, r6, sk->__sk_common.skc_rcv_saddr, sk->__sk_common.skc_daddr,
		  bpf_ntohs(inet->inet_sport), bpf_ntohs(sk->__sk_common.skc_dport), role, nat);
}

/* Whether the socket belongs to the watched cgroup (always, at the hierarchy's root). The
 * tracepoints fire for every socket of the host, and other agents attached to other cgroups
 * mark their sockets the same way: without this, two agents would fold each other's. */
static __always_inline bool in_target_cgroup(struct sock *sk)
{
	struct cgroup *cgrp, *ancestor = NULL;
	__u32 level = flowtel_cgroup_level;

	if (!flowtel_cgroup_id)
		return true;
	cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (!cgrp || BPF_CORE_READ(cgrp, level) < (int)level)
		return false;
	bpf_probe_read_kernel(&ancestor, sizeof(ancestor), &cgrp->ancestors[level & 0xff]);
	return ancestor && BPF_CORE_READ(ancestor, kn, id) == flowtel_cgroup_id;
}

/* A tracked socket's final counters into its pair, minus what walks reported, and its outcome.
 * `reset` says the caller saw a reset; otherwise an error on the socket means one. `nat` is
 * what NAT reversal knows of it. */
static __always_inline void close_fold(struct tcp_sock *tp, bool reset, const struct flowtel_nat_peer *nat)
{
	struct sock *sk = (struct sock *)tp;
	struct flowtel_pair_key key = {};
	struct flowtel_sock_reported *rep;
	struct flowtel_pair_stats *s;
	struct app_counts c = {};
	__u32 cb_flags = tp->bpf_sock_ops_cb_flags;
	__u8 role = role_of_flags(cb_flags);
	bool outcome_counted;
	int sk_err;

	if ((cb_flags & FLOWTEL_CB_TRACKED) != FLOWTEL_CB_TRACKED)
		return; /* not ours: outside the cgroup, or opened before the agent and never walked */
	key_from_sock(sk, &key, role, nat);
	s = pair_stats(&key);
	if (!s)
		return;
	/* one cgroup per pair and interval: the first socket's */
	if (!s->cgroup_id)
		s->cgroup_id = sock_cgroup_id(sk);
	sk_err = sk->sk_err;
	rep = bpf_sk_storage_get(&sock_reported, sk, 0, 0);
	outcome_counted = rep && rep->folded;

	/* a client still in its handshake never connected: its failure was counted at its
	 * SYN_SENT -> CLOSE state callback. The flag, not the counters, says so: it is cleared in
	 * the very callback that counts the connection established, so that every established
	 * connection is also closed (tcp_disconnect() zeroes bytes_acked, for one) */
	if (role == FLOWTEL_ROLE_CLIENT && (cb_flags & FLOWTEL_CB_HANDSHAKE) && !outcome_counted)
		return;
	reset = reset || sk_err;
	/* our FIN went out on a close without error (tcp_done also sets SEND_SHUTDOWN on a reset) */
	app_counts(tp, !reset && (sk->sk_shutdown & SEND_SHUTDOWN), role, &c);
	if (rep) {
		c.bytes_sent = delta(c.bytes_sent, &rep->bytes_sent);
		c.bytes_received = delta(c.bytes_received, &rep->bytes_received);
		c.segs_sent = delta(c.segs_sent, &rep->segs_sent);
		c.segs_received = delta(c.segs_received, &rep->segs_received);
	}
	add_counts(s, &c);
	if (outcome_counted)
		return;
	add_srtt(s, tp->srtt_us);
	add_rcv_rtt(s, tp->rcv_rtt_est.rtt_us);
	if (role == FLOWTEL_ROLE_SERVER && !(rep && rep->established_counted))
		__sync_fetch_and_add(&s->conn_established, 1);
	if (reset)
		__sync_fetch_and_add(&s->conn_reset, 1);
	else
		__sync_fetch_and_add(&s->conn_closed, 1);
}

/* A connect that failed, at its SYN_SENT -> CLOSE transition, with the error still set. */
static __always_inline void on_connect_failed(struct bpf_sock_ops *ctx)
{
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	struct bpf_sock *bsk = ctx->sk;
	struct tcp_sock *tp = bsk ? bpf_skc_to_tcp_sock(bsk) : NULL;

	if (!tp)
		return;
	key_from_sock_ops(ctx, &key, FLOWTEL_ROLE_CLIENT);
	s = pair_stats(&key);
	if (s)
		__sync_fetch_and_add(&s->conn_failed[failure_of(tp->inet_conn.icsk_inet.sk.sk_err) %
						    FLOWTEL_FAILURES], 1);
}

SEC("sockops")
int flowtel_sockops(struct bpf_sock_ops *ctx)
{
	__u32 op = ctx->op;

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(ctx);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_active_established(ctx);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(ctx);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[0] == BPF_TCP_SYN_SENT && ctx->args[1] == BPF_TCP_CLOSE)
			on_connect_failed(ctx);
		break;
	case BPF_SOCK_OPS_RETRANS_CB:
		on_retrans(ctx);
		break;
	case BPF_SOCK_OPS_RTO_CB:
		on_rto(ctx);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		if (flowtel_per_ack_rtt)
			on_rtt(ctx);
		break;
	}
	return 1;
}

/* The packet's first `len` bytes: in place, where the output path has them in the linear part,
 * else copied into `copy` by the helper; NULL when they cannot be read. */
static __always_inline __u8 *packet_head(struct __sk_buff *skb, __u8 *copy, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (data + len <= end)
		return data;
	return bpf_skb_load_bytes(skb, 0, copy, len) ? NULL : copy;
}

/* A client's SYN on its way out, after the netfilter output and postrouting hooks: its header
 * names where DNAT sent it, while the socket still names the address the client asked for.
 * Where they differ, the real peer is stored with the socket, where every later key finds it.
 * The first SYN leaves from connect(), so the owner is noted here, under the final key. */
static __noinline int on_syn_egress(struct __sk_buff *skb)
{
	struct flowtel_pair_key key = {};
	struct flowtel_nat_peer peer = {};
	struct bpf_sock *bsk = skb->sk;
	struct tcp_sock *tp;
	__u32 real[4] = {};
	__be16 real_port = 0;
	bool dnat = false, first;

	if (!bsk)
		return 1;
	/* NULL for anything but a full TCP socket */
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		/* the IPv4 header and, without options, the TCP ports */
		__u8 copy[24], *h = packet_head(skb, copy, sizeof(copy));

		if (!h)
			return 1;
		__builtin_memcpy(&real[0], &h[16], 4);
		if ((h[0] & 0xf) == 5)
			__builtin_memcpy(&real_port, &h[22], 2);
		else if (bpf_skb_load_bytes(skb, (h[0] & 0xf) * 4 + 2, &real_port, 2))
			return 1;
		dnat = real[0] != bsk->dst_ip4 || real_port != bsk->dst_port;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 copy[44], *h = packet_head(skb, copy, sizeof(copy));

		/* a SYN with IPv6 extension headers is not looked into */
		if (!h || h[6] != IPPROTO_TCP)
			return 1;
		__builtin_memcpy(real, &h[24], 16);
		__builtin_memcpy(&real_port, &h[42], 2);
		dnat = real[0] != bsk->dst_ip6[0] || real[1] != bsk->dst_ip6[1] ||
		       real[2] != bsk->dst_ip6[2] || real[3] != bsk->dst_ip6[3] ||
		       real_port != bsk->dst_port;
		/* an IPv4 peer of a dual-stack socket travels as IPv4: the key's layout */
		if (is_v4_mapped(real)) {
			real[0] = real[3];
			real[1] = real[2] = real[3] = 0;
		}
	} else {
		return 1;
	}
	/* A first SYN (no retransmit yet) starts a connection: what an earlier connection of the
	 * same socket (connect() again after a disconnect) left is replaced or removed. A
	 * retransmitted SYN rewrites its entry with the same peer (conntrack keeps the mapping), or
	 * takes a slot if the first SYN found none. */
	first = !tp->total_retrans;
	if (dnat) {
		/* a socket without a cookie yet has no slot to look for */
		__u64 cookie = cookie_if_any((struct sock *)tp);
		struct flowtel_nat_slot *slot = cookie ? nat_slot_take(cookie) :
						nat_slot_claim(bpf_get_socket_cookie(skb));

		__builtin_memcpy(peer.addr, real, 16);
		peer.port = bpf_ntohs(real_port);
		if (slot) {
			slot->peer = peer;
			if (first)
				count(FLOWTEL_CTR_NAT_REVERSED);
		} else {
			count(FLOWTEL_CTR_NAT_UNSTORED);
			peer.port = 0;
		}
	} else if (first) {
		/* only a socket with a cookie can have an entry; most have none */
		nat_slot_free(cookie_if_any((struct sock *)tp));
	}
	/* a retransmitted SYN leaves from a timer, in no process of the connection's */
	if (!first)
		return 1;
	key_from_sock((struct sock *)tp, &key, FLOWTEL_ROLE_CLIENT, peer.port ? &peer : NULL);
	note_owner(&key, tp);
	return 1;
}

/* Attached only while NAT reversal is on. It runs for every packet the cgroup sends, so all but
 * a connecting client's (its SYN) return at the first test. */
SEC("cgroup_skb/egress")
int flowtel_nat_syn(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk || sk->state != BPF_TCP_SYN_SENT)
		return 1;
	return on_syn_egress(skb);
}

/* DNS capture: answers reach user space through this ring buffer, whole or cut at
 * FLOWTEL_DNS_CAPTURE_BYTES; a full ring is counted (FLOWTEL_CTR_DNS_RING_FULL). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOWTEL_DNS_RING_BYTES);
} dns_answers SEC(".maps");

/* One event under construction per CPU: too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flowtel_dns_event);
} dns_scratch SEC(".maps");

/* Copies one payload from port 53 into the ring buffer. Parsing is user space's: the kernel
 * only finds where the payload starts. */
static __noinline int capture_dns(struct __sk_buff *skb, __u32 l4, __u32 transport)
{
	struct flowtel_dns_event *ev;
	__u32 zero = 0, payload, len;

	ev = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!ev)
		goto failed;
	ev->tcp_seq = 0;
	if (transport == IPPROTO_TCP) {
		__u8 tcp[13];

		if (bpf_skb_load_bytes(skb, l4, tcp, sizeof(tcp)))
			goto failed;
		ev->tcp_seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
		ev->client_port = ((__u16)tcp[2] << 8) | tcp[3];
		payload = l4 + (tcp[12] >> 4) * 4;
	} else {
		__u8 udp[4];

		if (bpf_skb_load_bytes(skb, l4, udp, sizeof(udp)))
			goto failed;
		ev->client_port = ((__u16)udp[2] << 8) | udp[3];
		payload = l4 + 8;
	}
	/* a bare ACK or FIN of a DNS-over-TCP connection */
	if (skb->len <= payload)
		return 1;
	len = skb->len - payload;
	ev->wire_len = len;
	__builtin_memset(ev->server, 0, sizeof(ev->server));
	__builtin_memset(ev->client, 0, sizeof(ev->client));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		ev->ipv6 = 0;
		if (bpf_skb_load_bytes(skb, 12, ev->server, 4) || bpf_skb_load_bytes(skb, 16, ev->client, 4))
			goto failed;
	} else {
		ev->ipv6 = 1;
		if (bpf_skb_load_bytes(skb, 8, ev->server, 16) || bpf_skb_load_bytes(skb, 24, ev->client, 16))
			goto failed;
	}
	ev->cgroup_id = bpf_skb_cgroup_id(skb);
	ev->transport = transport;
	/* 1..FLOWTEL_DNS_CAPTURE_BYTES in a form the verifier follows: clamp len - 1, add 1 back */
	len -= 1;
	if (len > FLOWTEL_DNS_CAPTURE_BYTES - 1)
		len = FLOWTEL_DNS_CAPTURE_BYTES - 1;
	asm volatile("" : "+r"(len));
	len += 1;
	ev->captured_len = len;
	if (bpf_skb_load_bytes(skb, payload, ev->payload, len))
		goto failed;
	/* user space reads the ring on a timer, never waiting on it: no wakeup to pay for */
	if (bpf_ringbuf_output(&dns_answers, ev, offsetof(struct flowtel_dns_event, payload) + len, BPF_RB_NO_WAKEUP))
		count(FLOWTEL_CTR_DNS_RING_FULL);
	return 1;
failed:
	count(FLOWTEL_CTR_DNS_CAPTURE_FAILED);
	return 1;
}

/* Attached while dns.enabled. It runs for every packet a socket of the cgroup receives, so all
 * but those from port 53 return after reading two header fields. Never drops a packet. */
SEC("cgroup_skb/ingress")
int flowtel_dns(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 l4, transport;
	__u16 *sport;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > end)
			return 1;
		transport = ip->protocol;
		l4 = ip->ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;

		/* extension headers are not followed: DNS answers do not carry them */
		if ((void *)(ip6 + 1) > end)
			return 1;
		transport = ip6->nexthdr;
		l4 = sizeof(*ip6);
	} else {
		return 1;
	}
	if (transport != IPPROTO_UDP && transport != IPPROTO_TCP)
		return 1;
	/* the source port is the first field of both headers; the receive path has pulled it, so
	 * the helper is only a fallback */
	sport = data + l4;
	if ((void *)(sport + 1) <= end) {
		if (*sport != bpf_htons(53))
			return 1;
	} else {
		__u16 port;

		if (bpf_skb_load_bytes(skb, l4, &port, sizeof(port)) || port != bpf_htons(53))
			return 1;
	}
	return capture_dns(skb, l4, transport);
}

/* Once per socket, when it is destroyed: the close fold, for every tracked socket. One
 * tracepoint call per socket instead of a STATE_CB call per state change. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(flowtel_destroy, struct sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	struct flowtel_nat_slot *slot = NULL;

	if (!in_target_cgroup(sk))
		return 0;
	if (!tp) {
		count(FLOWTEL_CTR_NO_TCP_SOCK);
		return 0;
	}
	/* Only clients' keys name a real peer, but any socket's slot is freed, marked a client or
	 * not (a walk may have taken one for a socket it could not mark). Most sockets have no
	 * cookie, so no slot to look for. */
	if (flowtel_nat) {
		__u64 cookie = cookie_if_any((struct sock *)tp);

		slot = cookie ? nat_slot(cookie) : NULL;
	}
	close_fold(tp, false,
		   slot && role_of_flags(tp->bpf_sock_ops_cb_flags) == FLOWTEL_ROLE_CLIENT ? &slot->peer : NULL);
	if (slot)
		nat_slot_release(slot);
	return 0;
}

/* A reset sent by a socket already in CLOSE ends its connection: close() with unread data, or
 * tcp_disconnect() (SO_LINGER 0, connect(AF_UNSPEC)), which then zeroes the counters before the
 * socket is destroyed. A reset answering a stray segment does not end anything. */
/* Folds a connection that a reset ended, now, and marks it so that its destruction adds only
 * what it counts afterwards. Storage is created only here: resets are rare. */
static __always_inline void reset_fold(struct tcp_sock *tp)
{
	struct flowtel_sock_reported *rep;

	if ((tp->bpf_sock_ops_cb_flags & FLOWTEL_CB_TRACKED) != FLOWTEL_CB_TRACKED)
		return;
	rep = bpf_sk_storage_get(&sock_reported, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rep) {
		count(FLOWTEL_CTR_SOCK_STORAGE_FAILED);
		return;
	}
	if (rep->folded)
		return;
	/* the fold records the counters as reported: only later growth counts at destruction */
	close_fold(tp, true,
		   flowtel_nat && role_of_flags(tp->bpf_sock_ops_cb_flags) == FLOWTEL_ROLE_CLIENT ?
			   nat_peer(cookie_if_any((struct sock *)tp), FLOWTEL_ROLE_CLIENT) : NULL);
	rep->folded = 1;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(flowtel_reset_sent, struct sock *sk)
{
	struct tcp_sock *tp;

	if (!sk || sk->__sk_common.skc_state != BPF_TCP_CLOSE)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp && in_target_cgroup((struct sock *)tp))
		reset_fold(tp);
	return 0;
}

/* A reset received ends the connection, and the application may read (and so clear) the error
 * before it closes the socket. A reset to a SYN is a failed connect: the state callback counts
 * it. */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(flowtel_reset_received, struct sock *sk)
{
	struct tcp_sock *tp;

	if (!sk || sk->__sk_common.skc_state == BPF_TCP_SYN_SENT)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp && in_target_cgroup((struct sock *)tp))
		reset_fold(tp);
	return 0;
}


/* Walks every TCP socket of the reader's network namespace (user space enters each one):
 * keeps long-lived sockets current, samples their RTT, counts them as active. */
SEC("iter/tcp")
int flowtel_walk(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct flowtel_sock_reported *rep;
	struct flowtel_pair_key key = {};
	struct flowtel_pair_stats *s;
	struct app_counts c = {};
	struct tcp_sock *tp;
	struct sock *sk;
	__u32 cb_flags, l6[4], r6[4];
	__u8 role, state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (state == BPF_TCP_LISTEN) {
		struct flowtel_listener_key lk = {
			.netns = BPF_CORE_READ(skc, skc_net.net, ns.inum),
			.port = skc->skc_num,
		};
		__u8 one = 1;

		if (bpf_map_update_elem(&listeners, &lk, &one, BPF_ANY))
			count(FLOWTEL_CTR_LISTENER_MAP_FULL);
		return 0;
	}
	if (state != BPF_TCP_ESTABLISHED && state != BPF_TCP_CLOSE_WAIT &&
	    state != BPF_TCP_FIN_WAIT1 && state != BPF_TCP_FIN_WAIT2 &&
	    state != BPF_TCP_CLOSING && state != BPF_TCP_LAST_ACK)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	if (!in_target_cgroup(sk))
		return 0;

	cb_flags = tp->bpf_sock_ops_cb_flags;
	if ((cb_flags & FLOWTEL_CB_TRACKED) == FLOWTEL_CB_TRACKED) {
		role = role_of_flags(cb_flags);
	} else {
		/* Opened before the agent: a listener on the local port makes it the server end. */
		struct flowtel_listener_key lk = {
			.netns = BPF_CORE_READ(skc, skc_net.net, ns.inum),
			.port = skc->skc_num,
		};

		role = bpf_map_lookup_elem(&listeners, &lk) ? FLOWTEL_ROLE_SERVER : FLOWTEL_ROLE_CLIENT;
	}

	rep = bpf_sk_storage_get(&sock_reported, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rep) {
		/* nothing reported for it yet, so its close folds it whole: exact, only later */
		count(FLOWTEL_CTR_SOCK_STORAGE_FAILED);
		return 0;
	}
	BPF_CORE_READ_INTO(&l6, skc, skc_v6_rcv_saddr.in6_u.u6_addr32);
	BPF_CORE_READ_INTO(&r6, skc, skc_v6_daddr.in6_u.u6_addr32);
	build_key(&key, skc->skc_family, l6, r6, skc->skc_rcv_saddr, skc->skc_daddr, skc->skc_num,
		  bpf_ntohs(skc->skc_dport), role, NULL);
	if (flowtel_nat && role == FLOWTEL_ROLE_CLIENT) {
		struct flowtel_nat_peer *nat = nat_peer(cookie_if_any(sk), role);

		/* First met with no SYN seen (it predates the agent, or this agent's programs): if
		 * it may be DNATed, user space looks it up in conntrack, by its client port. */
		if (!nat && !rep->established_counted && nat_destination(&key)) {
			struct flowtel_nat_slot *slot = nat_slot_claim(bpf_get_socket_cookie(sk));

			if (slot) {
				slot->peer = (struct flowtel_nat_peer){ .lookup = 1 };
				count(FLOWTEL_CTR_NAT_PREEXISTING);
				nat = &slot->peer;
			} else {
				count(FLOWTEL_CTR_NAT_UNSTORED);
			}
		}
		if (nat) {
			__builtin_memset(&key, 0, sizeof(key));
			build_key(&key, skc->skc_family, l6, r6, skc->skc_rcv_saddr, skc->skc_daddr,
				  skc->skc_num, bpf_ntohs(skc->skc_dport), role, nat);
		}
	}
	count(FLOWTEL_CTR_WALK_SOCKETS);
	s = pair_stats(&key);
	if (!s)
		return 0;

	app_counts(tp, our_fin_sent(state), role, &c);
	c.bytes_sent = delta(c.bytes_sent, &rep->bytes_sent);
	c.bytes_received = delta(c.bytes_received, &rep->bytes_received);
	c.segs_sent = delta(c.segs_sent, &rep->segs_sent);
	c.segs_received = delta(c.segs_received, &rep->segs_received);
	add_counts(s, &c);
	add_srtt(s, tp->srtt_us);
	add_rcv_rtt(s, tp->rcv_rtt_est.rtt_us);
	__sync_fetch_and_add(&s->active, 1);
	s->cgroup_id = sock_cgroup_id(sk);

	if ((cb_flags & FLOWTEL_CB_TRACKED) != FLOWTEL_CB_TRACKED) {
		/* Opened before the agent (or untracked by another program): report what its
		 * counters gained since the last walk, then adopt it so that callbacks count its
		 * retransmits and its close from here on (TCP_BPF_SOCK_OPS_CB_FLAGS, Linux 6.11+;
		 * older kernels keep the per-walk deltas). */
		__u64 retrans = delta(tp->total_retrans, &rep->retrans);
		__u32 flags;

		if (retrans)
			__sync_fetch_and_add(&s->retrans[FLOWTEL_PHASE_ESTABLISHED], retrans);
		if (bpf_core_field_exists(tp->total_rto)) {
			__u32 rto = tp->total_rto;

			if (rto > rep->rto) {
				__sync_fetch_and_add(&s->rto[FLOWTEL_PHASE_ESTABLISHED], rto - rep->rto);
				rep->rto = rto;
			}
		}
		flags = cb_flags | FLOWTEL_CB_TRACKED |
			(role == FLOWTEL_ROLE_CLIENT ? FLOWTEL_CB_CLIENT_MARK : 0) |
			(flowtel_per_ack_rtt ? BPF_SOCK_OPS_RTT_CB_FLAG : 0);
		bpf_setsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &flags, sizeof(flags));
	}
	if (!rep->established_counted) {
		rep->established_counted = 1;
		/* clients we saw connect were counted at ACTIVE_ESTABLISHED */
		if (!(role == FLOWTEL_ROLE_CLIENT && (cb_flags & FLOWTEL_CB_TRACKED) == FLOWTEL_CB_TRACKED))
			__sync_fetch_and_add(&s->conn_established, 1);
	}
	return 0;
}
