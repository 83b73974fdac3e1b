#!/usr/bin/env bash
# What a DNS answer costs flowtel's capture: a real dnsmasq in a network namespace answers a
# closed loop of UDP queries from this host, with no agent, with the agent's DNS capture off, and
# with it on, interleaved. Prints queries per second per arm and, from kernel.bpf_stats_enabled
# and the agent's schedstat, the ingress program's ns per answer and the agent's CPU per answer,
# and checks that the agent learned one address record per answer. As root; asserts nothing.
#
#   integration/bench/dns_cost.sh [ROUNDS] [QUERIES]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
QUERIES=${2:-20000}
[ "$(id -u)" = 0 ] || { echo "run as root (BPF)" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "missing dnsmasq: apt-get install dnsmasq-base" >&2; exit 1; }
cargo build --release --quiet --bin flowtel
BIN=$PWD/target/release/flowtel
work=$(mktemp -d)
NS=flowtel_dnsb_$$
IF=fdb$$
old_stats=$(sysctl -n kernel.bpf_stats_enabled)
agent_pid="" dns_pid=""
cleanup() {
  [ -n "$agent_pid" ] && { kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null; } || true
  [ -n "$dns_pid" ] && { kill "$dns_pid" 2>/dev/null; wait "$dns_pid" 2>/dev/null; } || true
  ip netns delete "$NS" 2>/dev/null || true
  ip link delete "$IF" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats"
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$NS"
ip link add "$IF" type veth peer name "${IF}s" netns "$NS"
ip addr add 10.218.0.1/24 dev "$IF" && ip link set "$IF" up
ip -n "$NS" addr add 10.218.0.2/24 dev "${IF}s" && ip -n "$NS" link set "${IF}s" up && ip -n "$NS" link set lo up
ip netns exec "$NS" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
  --user=root --pid-file --listen-address=10.218.0.2 --host-record=load.flowtel.bench,10.218.0.10,300 \
  --cache-size=0 >"$work/dnsmasq.log" 2>&1 &
dns_pid=$!
sleep 1

# a closed loop of A queries on one socket: prints queries per second
cat > "$work/flood.py" <<'PY'
import socket, struct, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
name = b"".join(bytes([len(p)]) + p for p in b"load.flowtel.bench".split(b".")) + b"\0"
ok = 0
t0 = time.monotonic()
for i in range(n):
    s.sendto(struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1", ("10.218.0.2", 53))
    try:
        s.recv(512); ok += 1
    except socket.timeout:
        pass
print(ok / (time.monotonic() - t0), ok)
PY

prog_stats() { bpftool prog show -j | python3 -c '
import json, sys
t = c = 0
for p in json.load(sys.stdin):
    if p.get("name") == "flowtel_dns":
        t += p.get("run_time_ns", 0); c += p.get("run_cnt", 0)
print(t, c)'; }
cpu_ns_of() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%d\n", s }'; }
answers_of() { python3 - "$1" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
req = json.loads(lines[-1])
for m in req["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]:
    if m["name"] == "flowtel.agent.dns.answers":
        print(m["sum"]["dataPoints"][0]["asInt"]); break
else:
    print(0)
PY
}

sysctl -qw kernel.bpf_stats_enabled=1
printf "%-14s %6s %12s %10s %14s %16s %10s\n" arm round queries/s answered "ingress ns/call" "agent us/answer" learned
for round in $(seq "$ROUNDS"); do
  for arm in none flowtel_nodns flowtel; do
    rm -f "$work/export.jsonl"
    if [ "$arm" != none ]; then
      enabled=$([ "$arm" = flowtel ] && echo true || echo false)
      env -u FLOWTEL_CONFIG FLOWTEL_DNS__ENABLED=$enabled FLOWTEL_EXPORT__FILE_PATH="$work/export.jsonl" \
        FLOWTEL_EXPORT__INTERVAL_SECS=1 FLOWTEL_LOG=info "$BIN" run 2>"$work/agent.log" &
      agent_pid=$!
      for _ in $(seq 200); do grep -q "sampler attached" "$work/agent.log" && break; sleep 0.05; done
      sleep 1.5
    fi
    read -r t0 c0 < <(prog_stats)
    learned0=0 cpu0=0
    [ -n "$agent_pid" ] && { cpu0=$(cpu_ns_of "$agent_pid"); learned0=$(answers_of "$work/export.jsonl"); }
    read -r qps answered < <(python3 "$work/flood.py" "$QUERIES")
    read -r t1 c1 < <(prog_stats)
    per_answer=- agent_us=- learned=-
    if [ -n "$agent_pid" ]; then
      sleep 2.5   # the last answers polled and exported
      cpu1=$(cpu_ns_of "$agent_pid")
      learned=$(( $(answers_of "$work/export.jsonl") - learned0 ))
      agent_us=$(python3 -c "print(f'{($cpu1 - $cpu0) / $answered / 1000:.2f}')")
      [ "$arm" = flowtel ] && per_answer=$(python3 -c "print(f'{($t1 - $t0) / max($c1 - $c0, 1):.0f}')")
      kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
    fi
    printf "%-14s %6s %12.0f %10s %14s %16s %10s\n" "$arm" "$round" "$qps" "$answered" "$per_answer" "$agent_us" "$learned"
  done
done
