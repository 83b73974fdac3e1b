#!/usr/bin/env bash
# BPF cost per short connection, from the kernel's own accounting (kernel.bpf_stats_enabled):
# ns per invocation, invocations per connection (both ends), BPF time per connection, for an
# empty sock_ops program (the floor), flowtel's default, flowtel with per-ACK RTT samples, and NAT
# reversal on: "nat" with a destination list the churn never hits (plain connections with NAT
# reversal on), "nat_hit" with every connection made to 127.77.0.1:80, which an nftables rule in
# the output hook DNATs to the churn's server (100% reversed connections).
# flowtel's figures sum its sock_ops program, its close folds (tp_btf tcp_destroy_sock,
# tcp_send_reset, tcp_receive_reset) and, with NAT reversal on, its cgroup_skb egress program
# (flowtel_nat_syn), whose calls per connection and ns per call are also printed apart. The
# agent's own CPU (user + system) per connection is printed too.
# The arms run interleaved for ROUNDS rounds; medians with min..max are printed, since single
# rounds swing by 10-20% on small VMs. Run as root.
#   integration/bench/bpf_cost.sh [connections per round] [rounds]
#   ARMS="default nat nat_hit" picks arms (default: "default per_ack_rtt"); the arm "baseline" runs
#   BASELINE_BIN (say, a build of an earlier commit in a worktree) with its defaults, interleaved
#   with the others for a before/after comparison, and "baseline_nat_hit" runs it as nat_hit.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
ROUNDS=${2:-5}
BIN=${BIN:-target/release/flowtel}
[ -x "$BIN" ] || cargo build --release
work=$(mktemp -d)
agent_pid=""
pin=""
NAT_TABLE=flowtel_bench_dnat_$$
NAT_PORT=${NAT_PORT:-47391}
cgroup=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
old_stats=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  if [ -n "$pin" ]; then bpftool cgroup detach "$cgroup" sock_ops pinned "$pin" 2>/dev/null || true; rm -f "$pin"; fi
  nft delete table ip "$NAT_TABLE" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats"
  rm -rf "$work"
}
trap cleanup EXIT
sysctl -qw kernel.bpf_stats_enabled=1
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# "run_time_ns run_cnt" of the named program, summed over instances
prog_stats() {
  bpftool prog show -j | python3 -c '
import json, sys
names = sys.argv[1].split(",")
progs = [p for p in json.load(sys.stdin) if p.get("name") in names]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))' "$1"
}

# CPU seconds (user + system) of a pid
cpu_of() { python3 -c '
import os, sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
print((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))' "$1"; }

# every churn connection of the nat_hit arm goes to 127.77.0.1:80, DNATed to the churn's server
nft -f - <<NFT
add table ip $NAT_TABLE
add chain ip $NAT_TABLE out { type nat hook output priority -100; policy accept; }
add rule ip $NAT_TABLE out ip daddr 127.77.0.1 tcp dport 80 dnat to 127.0.0.1:$NAT_PORT
NFT

# one churn under ARM, measuring PROG, the egress program and the walk (and the agent's CPU, when
# one runs): appends a JSON line to $work/results
measure() {
  local arm=$1 prog=$2 walk=$3 t0 c0 e0 ec0 w0 wc0 t1 c1 e1 ec1 w1 wc1 conns secs rate cpu0=0 cpu1=0
  local churn_env=()
  [[ "$arm" == *nat_hit ]] && churn_env=(CHURN_PORT="$NAT_PORT" CHURN_CONNECT=127.77.0.1:80)
  [ -n "$agent_pid" ] && cpu0=$(cpu_of "$agent_pid")
  read -r t0 c0 < <(prog_stats "$prog")
  read -r e0 ec0 < <(prog_stats flowtel_nat_syn)
  read -r w0 wc0 < <(prog_stats "$walk")
  read -r conns secs rate < <(env "${churn_env[@]}" python3 integration/bench/churn.py "$N" 2)
  read -r t1 c1 < <(prog_stats "$prog")
  read -r e1 ec1 < <(prog_stats flowtel_nat_syn)
  read -r w1 wc1 < <(prog_stats "$walk")
  # the agent drains the last interval before its CPU is read
  [ -n "$agent_pid" ] && { sleep 2.2; cpu1=$(cpu_of "$agent_pid"); }
  echo "{\"arm\":\"$arm\",\"conns\":$conns,\"rate\":$rate,\"ns\":$((t1 - t0)),\"calls\":$((c1 - c0)),\"egress_ns\":$((e1 - e0)),\"egress_calls\":$((ec1 - ec0)),\"walk_ns\":$((w1 - w0)),\"walk_calls\":$((wc1 - wc0)),\"cpu_s\":$(python3 -c "print($cpu1 - $cpu0)")}" >> "$work/results"
}

cat > "$work/empty.bpf.c" <<'C'
#include "vmlinux.h"
__attribute__((section("sockops"), used)) int flowtel_floor(struct bpf_sock_ops *ctx) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I "bpf/vmlinux/$(uname -m)" -c "$work/empty.bpf.c" -o "$work/empty.bpf.o"

for round in $(seq "$ROUNDS"); do
  pin=/sys/fs/bpf/flowtel_floor_$$
  bpftool prog load "$work/empty.bpf.o" "$pin" type sockops
  bpftool cgroup attach "$cgroup" sock_ops pinned "$pin" multi
  measure floor flowtel_floor none
  bpftool cgroup detach "$cgroup" sock_ops pinned "$pin"
  rm -f "$pin"; pin=""
  for arm in ${ARMS:-default per_ack_rtt}; do
    # only what the arm changes: an older build (BIN=...) knows no [nat]
    settings=(FLOWTEL_LOG=info)
    [ "$arm" = per_ack_rtt ] && settings+=(FLOWTEL_SAMPLER__PER_ACK_RTT=true)
    [ "$arm" = nat ] && settings+=('FLOWTEL_NAT__DESTINATIONS=["192.0.2.0/24"]')
    [[ "$arm" == *nat_hit ]] && settings+=('FLOWTEL_NAT__DESTINATIONS=["127.77.0.0/16"]')
    bin=$BIN
    [[ "$arm" == baseline* ]] && bin=${BASELINE_BIN:?"the baseline arm needs BASELINE_BIN"}
    env "${settings[@]}" "$bin" run 2>"$work/agent.log" &
    agent_pid=$!
    for _ in $(seq 100); do grep -q "sampler attached" "$work/agent.log" && break; sleep 0.1; done
    measure "$arm" flowtel_sockops,flowtel_destroy,flowtel_reset_sent,flowtel_reset_received,flowtel_nat_syn flowtel_walk
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
  done
  echo "round $round done" >&2
done

python3 - "$work/results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def fmt(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"
print("| arm | rounds | conn/s (python churn) | ns per call | calls per connection (both ends) | BPF us per connection | egress calls per connection | egress ns per call | walk us per connection | agent CPU us per connection |")
print("|---|---|---|---|---|---|---|---|---|---|")
for arm in ["floor", "baseline", "default", "per_ack_rtt", "nat", "baseline_nat_hit", "nat_hit"]:
    r = [x for x in rows if x["arm"] == arm]
    if not r:
        continue
    print(f"| {arm} | {len(r)} | {fmt([x['rate'] for x in r], 0)} | {fmt([x['ns'] / max(x['calls'], 1) for x in r], 0)} "
          f"| {fmt([x['calls'] / x['conns'] for x in r], 1)} | {fmt([x['ns'] / x['conns'] / 1000 for x in r], 2)} "
          f"| {fmt([x['egress_calls'] / x['conns'] for x in r], 1)} | {fmt([x['egress_ns'] / max(x['egress_calls'], 1) for x in r], 0)} "
          f"| {fmt([x['walk_ns'] / x['conns'] / 1000 for x in r], 2)} | {fmt([x['cpu_s'] * 1e6 / x['conns'] for x in r], 2)} |")
PY
