#!/usr/bin/env bash
# What a cgroup_skb ingress program costs connection churn, by itself and as flowtel's DNS
# capture: loopback churn (loadgen, 4 workers) under four arms, interleaved in every round:
#   floor     an empty sock_ops program
#   floor_in  the same plus an empty cgroup_skb ingress program (the kernel hook's own cost)
#   nodns     flowtel run with [dns] enabled = false
#   dns       flowtel run with its defaults (DNS capture on)
# Prints one line per arm and round, then paired ratios (median, mean, min..max). As root;
# asserts nothing. Build first: cargo build --release --bin flowtel --example loadgen
#
#   integration/bench/churn_ab.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-10}; SECS=${2:-8}
BIN=$PWD/target/release/flowtel; LOADGEN=$PWD/target/release/examples/loadgen
work=$(mktemp -d); cgroup=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
cat > $work/e.c <<'C'
#include "vmlinux.h"
__attribute__((section("sockops"), used)) int ab_floor(struct bpf_sock_ops *ctx) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
cat > $work/i.c <<'C'
#include "vmlinux.h"
__attribute__((section("cgroup_skb/ingress"), used)) int ab_floor_in(struct __sk_buff *skb) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I bpf/vmlinux/$(uname -m) -c $work/e.c -o $work/e.o
clang -O2 -g -target bpf -I bpf/vmlinux/$(uname -m) -c $work/i.c -o $work/i.o
agent=""
cleanup() { if [ -n "$agent" ]; then kill $agent 2>/dev/null || true; fi; bpftool cgroup detach $cgroup sock_ops pinned /sys/fs/bpf/ab_e 2>/dev/null; bpftool cgroup detach $cgroup ingress pinned /sys/fs/bpf/ab_i 2>/dev/null; rm -f /sys/fs/bpf/ab_e /sys/fs/bpf/ab_i; rm -rf $work; }
trap cleanup EXIT
for r in $(seq $ROUNDS); do
  for arm in floor floor_in nodns dns; do
    case $arm in
      floor|floor_in) bpftool prog load $work/e.o /sys/fs/bpf/ab_e type sockops; bpftool cgroup attach $cgroup sock_ops pinned /sys/fs/bpf/ab_e multi ;;&
      floor_in) bpftool prog load $work/i.o /sys/fs/bpf/ab_i type cgroup/skb; bpftool cgroup attach $cgroup ingress pinned /sys/fs/bpf/ab_i multi ;;
      nodns|dns) e=$([ $arm = dns ] && echo true || echo false)
        env -u FLOWTEL_CONFIG FLOWTEL_DNS__ENABLED=$e FLOWTEL_LOG=info $BIN run 2>$work/agent.log & agent=$!
        for _ in $(seq 200); do grep -q "sampler attached" $work/agent.log && break; sleep 0.05; done ;;
    esac
    rate=$($LOADGEN churn $SECS 4 | python3 -c 'import json,sys; print(json.load(sys.stdin)["rate"])')
    echo "$r $arm $rate" | tee -a "$work/rates"
    [ -n "$agent" ] && { kill $agent; wait $agent 2>/dev/null || true; agent=""; }
    bpftool cgroup detach $cgroup sock_ops pinned /sys/fs/bpf/ab_e 2>/dev/null || true
    bpftool cgroup detach $cgroup ingress pinned /sys/fs/bpf/ab_i 2>/dev/null || true
    rm -f /sys/fs/bpf/ab_e /sys/fs/bpf/ab_i
  done
done
python3 - "$work/rates" <<'PY'
import collections, statistics, sys
rate = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, arm, v = line.split()
    rate[r][arm] = float(v)
for a, b in [("floor_in", "floor"), ("nodns", "floor"), ("dns", "floor"), ("dns", "nodns")]:
    x = [rate[r][a] / rate[r][b] for r in rate if a in rate[r] and b in rate[r]]
    print(f"{a} / {b}: median {statistics.median(x):.3f}, mean {statistics.mean(x):.3f} ({min(x):.3f}..{max(x):.3f}), {len(x)} rounds")
PY
