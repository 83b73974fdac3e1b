#!/usr/bin/env bash
# flowtel's performance benchmark: one command, as root.
#
#   integration/bench/run.sh [--quick | --full] [--rounds N] [--out DIR]
#
# Arms, interleaved in every round (1 2 3 4 1 2 3 4 ...):
#   none     no agent
#   floor    an empty sock_ops program on the same cgroup (bpftool)
#   flowtel  `flowtel run` exporting over OTLP to a real receiver (rotel), with its defaults
#            (DNS capture on: its cgroup_skb ingress program sees every packet received)
#   flowtel_nodns  the same with the DNS capture off: what the capture costs everything else
#   flowtel_nat  the same with NAT reversal on (its egress program attached); the throughput
#            loads are not DNATed: what NAT reversal costs everything else
#   afpacket tcpdump -i any 'src port 53' to /dev/null: the other way to capture DNS answers, an
#            AF_PACKET socket with a kernel filter, for comparison with flowtel's ingress program
#   classic  libbpf-tools tcplife + tcpstates together
# Loads: loopback connection churn (integration/bench/loadgen.rs, closed loop), iperf3 bulk (1 and
# 4 streams), and many idle-but-open connections with a slow trickle (flowtel only: its CPU, poll
# time and RSS). Kernel cost comes from kernel.bpf_stats_enabled, in separate runs so that the
# stats do not slow the throughput arms; there, flowtel_nat's churn goes through an nftables DNAT
# rule (127.77.0.1:80 -> the churn's server), so that every connection is reversed, and
# floor_nat adds an empty cgroup_skb egress program to the empty sock_ops one, floor_dns an empty
# cgroup_skb ingress program. A loss run checks that flowtel counts every connection
# of a long churn, or counts what it could not keep.
#
# Writes DIR/report.md and DIR/results.json (every figure) and prints a summary table. Asserts
# nothing: it measures. --quick takes under 2 minutes; --full runs 11 rounds, 100k sockets and a
# 60 s loss run.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=quick
OUT=target/bench
ROUNDS_OVERRIDE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --out) OUT=$2; shift ;;
    --rounds) ROUNDS_OVERRIDE=$2; shift ;;
    *) echo "usage: $0 [--quick|--full] [--rounds N] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = full ]; then
  ROUNDS=11 CHURN_SECS=10 BULK_SECS=5 IDLE_COUNTS="10000 100000" IDLE_WINDOW=30 LOSS_SECS=60 STATS_SECS=5
else
  ROUNDS=3 CHURN_SECS=2 BULK_SECS=1 IDLE_COUNTS="10000" IDLE_WINDOW=5 LOSS_SECS=5 STATS_SECS=2
fi
[ -n "$ROUNDS_OVERRIDE" ] && ROUNDS=$ROUNDS_OVERRIDE
WORKERS=4
[ "$(id -u)" = 0 ] || { echo "run as root (BPF)" >&2; exit 1; }
for tool in bpftool clang iperf3 tcplife tcpstates tcpdump python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install bpftool clang iperf3 libbpf-tools tcpdump" >&2; exit 1; }
done
ROTEL=$(python3 -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null) \
  || { echo "missing rotel: pip install rotel" >&2; exit 1; }

echo "== building (release)" >&2
cargo build --release --quiet --bin flowtel --example loadgen
BIN=$PWD/target/release/flowtel
LOADGEN=$PWD/target/release/examples/loadgen
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
cgroup=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
old_stats=$(sysctl -n kernel.bpf_stats_enabled)
agent_pid="" rotel_pid="" pin="" pin_egress="" pin_ingress="" classic_pids="" idle_pids=""
NAT_TABLE=flowtel_bench_dnat_$$

cleanup() {
  stop_arm || true
  [ -n "$rotel_pid" ] && { kill "$rotel_pid" 2>/dev/null; wait "$rotel_pid" 2>/dev/null; } || true
  for p in $idle_pids; do kill "$p" 2>/dev/null || true; done
  pkill -f "iperf3 -s -p 5299" 2>/dev/null || true
  nft delete table ip "$NAT_TABLE" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats"
  rm -rf "$work"
}
trap cleanup EXIT
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# tcplife and tcpstates attach classic tracepoints, which libbpf finds through tracefs
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing

cat > "$work/empty.bpf.c" <<'C'
#include "vmlinux.h"
__attribute__((section("sockops"), used)) int flowtel_floor(struct bpf_sock_ops *ctx) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I "bpf/vmlinux/$(uname -m)" -c "$work/empty.bpf.c" -o "$work/empty.bpf.o"
cat > "$work/empty_egress.bpf.c" <<'C'
#include "vmlinux.h"
__attribute__((section("cgroup_skb/egress"), used)) int flowtel_floor_eg(struct __sk_buff *skb) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I "bpf/vmlinux/$(uname -m)" -c "$work/empty_egress.bpf.c" -o "$work/empty_egress.bpf.o"
cat > "$work/empty_ingress.bpf.c" <<'C'
#include "vmlinux.h"
__attribute__((section("cgroup_skb/ingress"), used)) int flowtel_floor_in(struct __sk_buff *skb) { return 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
C
clang -O2 -g -target bpf -I "bpf/vmlinux/$(uname -m)" -c "$work/empty_ingress.bpf.c" -o "$work/empty_ingress.bpf.o"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OTLP_PORT=$(free_port)
"$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$OTLP_PORT" --otlp-http-endpoint "127.0.0.1:$(free_port)" \
  --exporter blackhole >"$work/rotel.log" 2>&1 &
rotel_pid=$!
iperf3 -s -p 5299 -D >/dev/null 2>&1 || true
# the NAT arm's churn: every connection to 127.77.0.1:80 goes to the churn's server
NAT_PORT=$(free_port)
nft -f - <<NFT
add table ip $NAT_TABLE
add chain ip $NAT_TABLE out { type nat hook output priority -100; policy accept; }
add rule ip $NAT_TABLE out ip daddr 127.77.0.1 tcp dport 80 dnat to 127.0.0.1:$NAT_PORT
NFT

record() { echo "$1" >> "$RESULTS"; }

# CPU seconds (user, system) of a pid, from /proc/<pid>/stat
cpu_of() { python3 -c '
import os, sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
hz = os.sysconf("SC_CLK_TCK"); print(int(f[11]) / hz, int(f[12]) / hz)' "$1"; }
hwm_kb() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
# CPU nanoseconds of a process, all threads (schedstat: finer than the clock ticks of /stat)
cpu_ns_of() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%d\n", s }'; }

start_flowtel() {
  env -u FLOWTEL_CONFIG OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT" "$@" \
    FLOWTEL_EXPORT__FILE_PATH="$work/export.jsonl" FLOWTEL_EXPORT__INTERVAL_SECS=5 \
    FLOWTEL_RUN__SUMMARY_INTERVAL_SECS=1 FLOWTEL_LOG=info "$BIN" run 2>"$work/agent.log" &
  agent_pid=$!
  for _ in $(seq 200); do grep -q "sampler attached" "$work/agent.log" && return 0; sleep 0.05; done
  echo "flowtel did not attach:" >&2; cat "$work/agent.log" >&2; exit 1
}

start_arm() {
  case "$1" in
    none) ;;
    floor)
      pin=/sys/fs/bpf/flowtel_bench_floor_$$
      bpftool prog load "$work/empty.bpf.o" "$pin" type sockops
      bpftool cgroup attach "$cgroup" sock_ops pinned "$pin" multi ;;
    flowtel) rm -f "$work/export.jsonl"; start_flowtel ;;
    flowtel_nodns) rm -f "$work/export.jsonl"; start_flowtel FLOWTEL_DNS__ENABLED=false ;;
    flowtel_nat) rm -f "$work/export.jsonl"; start_flowtel 'FLOWTEL_NAT__DESTINATIONS=["127.77.0.0/16"]' ;;
    floor_dns)
      start_arm floor
      pin_ingress=/sys/fs/bpf/flowtel_bench_floor_in_$$
      bpftool prog load "$work/empty_ingress.bpf.o" "$pin_ingress" type cgroup/skb
      bpftool cgroup attach "$cgroup" ingress pinned "$pin_ingress" multi ;;
    floor_nat)
      start_arm floor
      pin_egress=/sys/fs/bpf/flowtel_bench_floor_eg_$$
      bpftool prog load "$work/empty_egress.bpf.o" "$pin_egress" type cgroup/skb
      bpftool cgroup attach "$cgroup" egress pinned "$pin_egress" multi ;;
    afpacket)
      tcpdump -i any -n -w /dev/null 'src port 53' 2>"$work/tcpdump.err" & classic_pids="$!"
      for _ in $(seq 100); do grep -q "listening on" "$work/tcpdump.err" && break; sleep 0.05; done ;;
    classic)
      tcplife >/dev/null 2>"$work/tcplife.err" & classic_pids="$!"
      tcpstates >/dev/null 2>"$work/tcpstates.err" & classic_pids="$classic_pids $!"
      sleep 1.5
      for p in $classic_pids; do
        kill -0 "$p" 2>/dev/null || { echo "a classic tool did not start:" >&2; cat "$work"/tcp*.err >&2; exit 1; }
      done ;;
  esac
}

stop_arm() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; agent_pid=""; fi
  if [ -n "$pin" ]; then bpftool cgroup detach "$cgroup" sock_ops pinned "$pin" 2>/dev/null || true; rm -f "$pin"; pin=""; fi
  if [ -n "$pin_egress" ]; then bpftool cgroup detach "$cgroup" egress pinned "$pin_egress" 2>/dev/null || true; rm -f "$pin_egress"; pin_egress=""; fi
  if [ -n "$pin_ingress" ]; then bpftool cgroup detach "$cgroup" ingress pinned "$pin_ingress" 2>/dev/null || true; rm -f "$pin_ingress"; pin_ingress=""; fi
  if [ -n "$classic_pids" ]; then
    for p in $classic_pids; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    classic_pids=""
  fi
}

iperf_bps() { iperf3 -c 127.0.0.1 -p 5299 -t "$BULK_SECS" -P "$1" -J | python3 -c '
import json, sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'; }

# ------------------------------------------------------------------ interleaved throughput
for round in $(seq "$ROUNDS"); do
  for arm in none floor flowtel flowtel_nodns flowtel_nat afpacket classic; do
    start_arm "$arm"
    [ "$arm" = flowtel ] && read -r u0 s0 < <(cpu_of "$agent_pid")
    t0=$(date +%s.%N)
    churn=$("$LOADGEN" churn "$CHURN_SECS" "$WORKERS")
    bulk1=$(iperf_bps 1)
    bulk4=$(iperf_bps 4)
    cpu=null rss=null
    if [ "$arm" = flowtel ]; then
      read -r u1 s1 < <(cpu_of "$agent_pid")
      cpu="{\"user\":$(python3 -c "print($u1-$u0)"),\"system\":$(python3 -c "print($s1-$s0)"),\"elapsed\":$(python3 -c "print($(date +%s.%N)-$t0)")}"
      rss=$(hwm_kb "$agent_pid")
    fi
    record "{\"kind\":\"throughput\",\"round\":$round,\"arm\":\"$arm\",\"churn\":$churn,\"bulk1_bps\":$bulk1,\"bulk4_bps\":$bulk4,\"flowtel_cpu\":$cpu,\"flowtel_rss_kb\":$rss}"
    stop_arm
  done
  echo "== round $round of $ROUNDS" >&2
done

# ------------------------------------------------------------------ kernel cost (bpf_stats)
prog_stats() { bpftool prog show -j | python3 -c '
import json, sys
out = {}
for p in json.load(sys.stdin):
    n = p.get("name", "")
    if n.startswith(sys.argv[1]):
        t, c = out.get(n, (0, 0)); out[n] = (t + p.get("run_time_ns", 0), c + p.get("run_cnt", 0))
print(json.dumps(out))' "$1"; }
stats_delta() { python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({n: {"ns": b[n][0] - a.get(n, (0, 0))[0], "calls": b[n][1] - a.get(n, (0, 0))[1]} for n in b}))' "$1" "$2"; }

sysctl -qw kernel.bpf_stats_enabled=1
for round in $(seq "$ROUNDS"); do
  for arm in floor floor_nat floor_dns flowtel flowtel_nodns flowtel_nat; do
    start_arm "$arm"
    prefix=$(case "$arm" in floor*) echo flowtel_floor ;; *) echo flowtel_ ;; esac)
    churn_env=()
    [ "$arm" = flowtel_nat ] && churn_env=(LOADGEN_PORT="$NAT_PORT" LOADGEN_CONNECT=127.77.0.1:80)
    agent_ns0=0 agent_ns1=0
    [ -n "$agent_pid" ] && agent_ns0=$(cpu_ns_of "$agent_pid")
    a=$(prog_stats "$prefix"); churn=$(env "${churn_env[@]}" "$LOADGEN" churn "$STATS_SECS" "$WORKERS"); b=$(prog_stats "$prefix")
    # the agent drains and reports the churn's last interval before its CPU is read
    [ -n "$agent_pid" ] && { sleep 1.5; agent_ns1=$(cpu_ns_of "$agent_pid"); }
    churn_stats=$(stats_delta "$a" "$b")
    a=$(prog_stats "$prefix")
    bytes=$(iperf3 -c 127.0.0.1 -p 5299 -t "$STATS_SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])')
    b=$(prog_stats "$prefix")
    record "{\"kind\":\"bpf_stats\",\"round\":$round,\"arm\":\"$arm\",\"churn\":$churn,\"churn_progs\":$churn_stats,\"agent_cpu_ns\":$((agent_ns1 - agent_ns0)),\"bulk_bytes\":$bytes,\"bulk_progs\":$(stats_delta "$a" "$b")}"
    stop_arm
  done
done
sysctl -qw kernel.bpf_stats_enabled="$old_stats"
echo "== kernel cost measured" >&2

# ------------------------------------------------------------------ many live sockets
PER_PROCESS=8000   # each process holds both ends: 2 fds per connection, under a 20k fd limit
for count in $IDLE_COUNTS; do
  start_flowtel
  procs=$(( (count + PER_PROCESS - 1) / PER_PROCESS ))
  idle_pids=""
  hold=$(( IDLE_WINDOW + 60 + count / 1000 ))
  for i in $(seq "$procs"); do
    n=$(( i < procs ? PER_PROCESS : count - PER_PROCESS * (procs - 1) ))
    "$LOADGEN" idle "$n" "$hold" 20 >"$work/idle.$i.json" 2>"$work/idle.$i.log" &
    idle_pids="$idle_pids $!"
  done
  for i in $(seq "$procs"); do
    until grep -q "connections open" "$work/idle.$i.log"; do sleep 0.2; done
  done
  sleep 3   # a few walks adopt the sockets
  read -r u0 s0 < <(cpu_of "$agent_pid")
  lines0=$(wc -l < "$work/agent.log")
  sleep "$IDLE_WINDOW"
  read -r u1 s1 < <(cpu_of "$agent_pid")
  polls=$(tail -n +"$lines0" "$work/agent.log" | { grep -o 'last_poll_us=[0-9]*' || true; } | cut -d= -f2 | tr '\n' ',' | sed 's/,$//')
  record "{\"kind\":\"idle\",\"connections\":$count,\"window_s\":$IDLE_WINDOW,\"user_s\":$(python3 -c "print($u1-$u0)"),\"system_s\":$(python3 -c "print($s1-$s0)"),\"rss_kb\":$(hwm_kb "$agent_pid"),\"poll_us\":[$polls]}"
  for p in $idle_pids; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  idle_pids=""
  stop_arm
  echo "== $count live sockets measured" >&2
done

# ------------------------------------------------------------------ loss: every connection counted
start_flowtel
churn=$("$LOADGEN" churn "$LOSS_SECS" "$WORKERS")
sleep 2
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=""
port=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["port"])' "$churn")
counted=$(python3 - "$work/export.jsonl" "$port" <<'PY'
import json, sys
req = json.loads(open(sys.argv[1]).read().splitlines()[-1])
port = int(sys.argv[2])
out = {"client": 0, "server": 0, "dropped": {}}
for m in req["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]:
    for p in m.get("sum", {}).get("dataPoints", []):
        a = {x["key"]: list(x["value"].values())[0] for x in p.get("attributes", [])}
        if m["name"] == "flowtel.tcp.connections" and a.get("flowtel.tcp.connection.outcome") == "established" \
                and str(a.get("server.port")) == str(port):
            out[a["network.tcp.handshake.role"]] += int(p["asInt"])
        if m["name"] == "flowtel.agent.dropped":
            out["dropped"][a["flowtel.drop.reason"]] = int(p["asInt"])
print(json.dumps(out))
PY
)
record "{\"kind\":\"loss\",\"seconds\":$LOSS_SECS,\"churn\":$churn,\"flowtel\":$counted}"
echo "== loss run measured" >&2

# ------------------------------------------------------------------ export cost (full mode)
if [ "$MODE" = full ]; then
  export_cost=$(cargo bench --quiet --bench export_cost 2>/dev/null | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')
  record "{\"kind\":\"export_cost\",\"text\":$export_cost}"
fi

python3 integration/bench/report.py "$RESULTS" "$OUT" "$MODE"
