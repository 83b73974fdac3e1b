#!/usr/bin/env bash
# BPF cost per short connection, from the kernel's own accounting (kernel.bpf_stats_enabled):
# ns per invocation, invocations per connection (both ends), BPF time per connection, for the
# empty-program floor, flowtel's default, and flowtel with per-ACK RTT. Also the socket-walk
# time per poll. Prints a table; run as root after `cargo build --release`.
#   integration/bench/bpf_cost.sh [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
BIN=target/release/flowtel
[ -x "$BIN" ] || cargo build --release
work=$(mktemp -d)
agent_pid=""
pin=""
cgroup=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  if [ -n "$pin" ]; then bpftool cgroup detach "$cgroup" sock_ops pinned "$pin" 2>/dev/null || true; rm -f "$pin"; fi
  sysctl -qw kernel.bpf_stats_enabled="$old_stats"
  rm -rf "$work"
}
old_stats=$(sysctl -n kernel.bpf_stats_enabled)
trap cleanup EXIT
sysctl -qw kernel.bpf_stats_enabled=1
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# prints "run_time_ns run_cnt" for the named program (summed over instances)
prog_stats() {
  bpftool prog show -j | python3 -c '
import json, sys
name = sys.argv[1]
progs = [p for p in json.load(sys.stdin) if p.get("name") == name]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))' "$1"
}

# measure LABEL PROG [WALK_PROG]: runs the churn and prints one table row; the walk program's
# time during the churn (it runs once per poll, not per connection) is shown apart
measure() {
  local label=$1 prog=$2 walk=${3:-none}
  read -r t0 c0 < <(prog_stats "$prog")
  read -r w0 wc0 < <(prog_stats "$walk")
  read -r conns secs rate < <(python3 integration/bench/churn.py "$N" 2)
  read -r t1 c1 < <(prog_stats "$prog")
  read -r w1 wc1 < <(prog_stats "$walk")
  python3 - "$label" "$conns" "$rate" "$t0" "$c0" "$t1" "$c1" "$w0" "$wc0" "$w1" "$wc1" "$secs" <<'PY'
import sys
label, conns, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0, c0, t1, c1, w0, wc0, w1, wc1 = map(int, sys.argv[4:12])
secs = float(sys.argv[12])
calls, ns = c1 - c0, t1 - t0
walk_ns, walk_calls = w1 - w0, wc1 - wc0
print(f"| {label} | {conns} | {rate} | {ns / max(calls, 1):.0f} | {calls / conns:.1f} | {ns / conns / 1000:.2f} "
      f"| {walk_calls} | {walk_ns / conns / 1000:.3f} |")
PY
}

echo "| arm | connections | conn/s (python churn) | sock_ops ns per call | sock_ops calls per connection (both ends) | sock_ops us per connection | walk visits | walk us per connection |"
echo "|---|---|---|---|---|---|---|---|"

# floor: an empty sock_ops program on the same cgroup
cat > "$work/empty.bpf.c" <<'C'
#include "vmlinux.h"
__attribute__((section("sockops"), used)) int flowtel_floor(struct bpf_sock_ops *ctx) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I "bpf/vmlinux/$(uname -m)" -c "$work/empty.bpf.c" -o "$work/empty.bpf.o"
pin=/sys/fs/bpf/flowtel_floor_$$
bpftool prog load "$work/empty.bpf.o" "$pin" type sockops
bpftool cgroup attach "$cgroup" sock_ops pinned "$pin" multi
measure "floor (empty sock_ops)" flowtel_floor
bpftool cgroup detach "$cgroup" sock_ops pinned "$pin"
rm -f "$pin"; pin=""

for arm in default per_ack_rtt; do
  extra=()
  [ "$arm" = per_ack_rtt ] && extra=(env FLOWTEL_SAMPLER__PER_ACK_RTT=true)
  "${extra[@]}" env FLOWTEL_LOG=info "$BIN" run 2>"$work/agent.log" &
  agent_pid=$!
  for _ in $(seq 100); do grep -q "sampler attached" "$work/agent.log" && break; sleep 0.1; done
  measure "flowtel ($arm)" flowtel_sockops flowtel_walk
  kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
done
