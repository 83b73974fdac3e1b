#!/usr/bin/env python3
"""Turns run.sh's results.jsonl into report.md and results.json, and prints the summary.

    report.py RESULTS_JSONL OUT_DIR MODE
"""
import datetime
import json
import os
import platform
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out_dir, mode = sys.argv[2], sys.argv[3]
ARMS = ["none", "floor", "flowtel", "flowtel_nodns", "flowtel_nat", "afpacket", "classic"]
STATS_ARMS = ["floor", "floor_nat", "floor_dns", "flowtel", "flowtel_nodns", "flowtel_nat"]


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s, scale=1.0, digits=0, unit=""):
    if not s:
        return "-"
    f = lambda v: f"{v * scale:,.{digits}f}"
    return f"{f(s['median'])}{unit} ({f(s['min'])}..{f(s['max'])})"


results = {"mode": mode, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "kernel": platform.release(), "cpus": os.cpu_count(), "raw": rows}

# --- throughput, interleaved
throughput = [r for r in rows if r["kind"] == "throughput"]
rounds = sorted({r["round"] for r in throughput})
loads = {"churn": lambda r: r["churn"]["rate"], "bulk1": lambda r: r["bulk1_bps"], "bulk4": lambda r: r["bulk4_bps"]}
tp = {}
for load, get in loads.items():
    tp[load] = {}
    none_by_round = {r["round"]: get(r) for r in throughput if r["arm"] == "none"}
    floor_by_round = {r["round"]: get(r) for r in throughput if r["arm"] == "floor"}
    flowtel_by_round = {r["round"]: get(r) for r in throughput if r["arm"] == "flowtel"}
    nodns_by_round = {r["round"]: get(r) for r in throughput if r["arm"] == "flowtel_nodns"}
    for arm in ARMS:
        mine = {r["round"]: get(r) for r in throughput if r["arm"] == arm}
        s = spread(list(mine.values()))
        none_median = spread(list(none_by_round.values()))
        tp[load][arm] = {
            "value": s,
            "ratio_to_none": s["median"] / none_median["median"] if s and none_median else None,
            "paired_ratio_to_none": spread([mine[k] / none_by_round[k] for k in mine if k in none_by_round]),
            "paired_ratio_to_floor": spread([mine[k] / floor_by_round[k] for k in mine if k in floor_by_round]),
            "paired_ratio_to_flowtel": spread([mine[k] / flowtel_by_round[k] for k in mine if k in flowtel_by_round]),
            "paired_ratio_to_flowtel_nodns": spread([mine[k] / nodns_by_round[k] for k in mine if k in nodns_by_round]),
        }
results["throughput"] = tp

flowtel_rounds = [r for r in throughput if r["arm"] == "flowtel" and r["flowtel_cpu"]]
results["flowtel_under_load"] = {
    "cpu_s_per_min_user": spread([r["flowtel_cpu"]["user"] / r["flowtel_cpu"]["elapsed"] * 60 for r in flowtel_rounds]),
    "cpu_s_per_min_system": spread([r["flowtel_cpu"]["system"] / r["flowtel_cpu"]["elapsed"] * 60 for r in flowtel_rounds]),
    "peak_rss_mb": spread([r["flowtel_rss_kb"] / 1024 for r in flowtel_rounds]),
}

# --- kernel cost
stats = [r for r in rows if r["kind"] == "bpf_stats"]
kc = {}
for arm in STATS_ARMS:
    mine = [r for r in stats if r["arm"] == arm]
    if not mine:
        continue
    per_conn = [sum(p["ns"] for p in r["churn_progs"].values()) / r["churn"]["connections"] / 1000 for r in mine]
    # bpf_stats times add up per program: the same rounds without the DNS capture's ingress program
    per_conn_no_dns = [sum(p["ns"] for n, p in r["churn_progs"].items() if n != "flowtel_dns")
                       / r["churn"]["connections"] / 1000 for r in mine]
    calls = [sum(p["calls"] for n, p in r["churn_progs"].items() if n != "flowtel_walk") / r["churn"]["connections"] for r in mine]
    per_mb = [sum(p["ns"] for p in r["bulk_progs"].values()) / (r["bulk_bytes"] / 1e6) for r in mine]
    progs = {}
    egress = [r["bulk_progs"].get("flowtel_nat_syn") or r["bulk_progs"].get("flowtel_floor_eg") for r in mine]
    bulk_egress = {
        "calls_per_mb": spread([e["calls"] / (r["bulk_bytes"] / 1e6) for e, r in zip(egress, mine) if e]),
        "ns_per_call": spread([e["ns"] / e["calls"] for e in egress if e and e["calls"]]),
    }
    ingress = [r["bulk_progs"].get("flowtel_dns") or r["bulk_progs"].get("flowtel_floor_in") for r in mine]
    bulk_ingress = {
        "calls_per_mb": spread([e["calls"] / (r["bulk_bytes"] / 1e6) for e, r in zip(ingress, mine) if e]),
        "ns_per_call": spread([e["ns"] / e["calls"] for e in ingress if e and e["calls"]]),
    }
    for name in sorted({n for r in mine for n in r["churn_progs"]}):
        progs[name] = {
            "ns_per_call": spread([r["churn_progs"][name]["ns"] / r["churn_progs"][name]["calls"]
                                   for r in mine if r["churn_progs"].get(name, {}).get("calls")]),
            "calls_per_connection": spread([r["churn_progs"].get(name, {"calls": 0})["calls"] / r["churn"]["connections"] for r in mine]),
            "us_per_connection": spread([r["churn_progs"].get(name, {"ns": 0})["ns"] / r["churn"]["connections"] / 1000 for r in mine]),
        }
    kc[arm] = {"bpf_us_per_connection": spread(per_conn), "bpf_us_per_connection_without_dns_capture": spread(per_conn_no_dns),
               "invocations_per_connection": spread(calls),
               "bpf_ns_per_mb_bulk": spread(per_mb), "programs": progs,
               "churn_rate_with_stats": spread([r["churn"]["rate"] for r in mine]),
               "agent_cpu_us_per_connection": spread([r["agent_cpu_ns"] / r["churn"]["connections"] / 1000
                                                      for r in mine if r.get("agent_cpu_ns")]),
               "bulk_egress": bulk_egress, "bulk_ingress": bulk_ingress}
results["kernel_cost"] = kc

# --- many live sockets
idle = {}
for r in rows:
    if r["kind"] != "idle":
        continue
    cpu = (r["user_s"] + r["system_s"]) / r["window_s"]
    idle[str(r["connections"])] = {
        "cpu_percent_of_one_core": cpu * 100, "user_s": r["user_s"], "system_s": r["system_s"],
        "window_s": r["window_s"], "rss_mb": r["rss_kb"] / 1024, "poll_ms": spread([p / 1000 for p in r["poll_us"]])}
results["live_sockets"] = idle

loss = next((r for r in rows if r["kind"] == "loss"), None)
if loss:
    made = loss["churn"]["connections"]
    results["loss"] = {"seconds": loss["seconds"], "rate": loss["churn"]["rate"], "connections_made": made,
                       "loadgen_errors": loss["churn"]["errors"], "flowtel_client": loss["flowtel"]["client"],
                       "flowtel_server": loss["flowtel"]["server"], "dropped": loss["flowtel"]["dropped"]}
export = next((r for r in rows if r["kind"] == "export_cost"), None)
results["export_cost"] = export["text"] if export else None

# --- budget
def med(s):
    return s["median"] if s else None

budget = []
bpf = med(kc["flowtel"]["bpf_us_per_connection"])
budget.append(("BPF time per short connection", "<= 2.0 us", f"{bpf:.2f} us" if bpf else "-", bpf is not None and bpf <= 2.0))
if "flowtel_nat" in kc:
    nat = med(kc["flowtel_nat"]["bpf_us_per_connection"])
    nat_own = med(kc["flowtel_nat"]["bpf_us_per_connection_without_dns_capture"])
    budget.append(("NAT: BPF time per reversed connection, NAT reversal's programs (all but the DNS capture's ingress program)",
                   "<= 2.5 us", f"{nat_own:.2f} us" if nat_own else "-", nat_own is not None and nat_own <= 2.5))
    budget.append(("NAT: the same with the DNS capture's ingress program (the default)", "<= 2.5 us",
                   f"{nat:.2f} us" if nat else "-", nat is not None and nat <= 2.5))
    cpu_nat, cpu_plain = med(kc["flowtel_nat"]["agent_cpu_us_per_connection"]), med(kc["flowtel"]["agent_cpu_us_per_connection"])
    if cpu_nat is not None and cpu_plain is not None:
        extra = cpu_nat - cpu_plain
        budget.append(("NAT: agent CPU for reversal per connection", "<= 0.5 us",
                       f"{extra:.2f} us ({cpu_nat:.2f} reversed - {cpu_plain:.2f} plain)", extra <= 0.5))
churn_floor = med(tp["churn"]["flowtel"]["paired_ratio_to_floor"])
budget.append(("churn vs floor (paired, median), DNS capture on", ">= 0.97", f"{churn_floor:.3f}" if churn_floor else "-", churn_floor is not None and churn_floor >= 0.97))
r = med(tp["churn"]["flowtel"]["paired_ratio_to_flowtel_nodns"])
budget.append(("churn with DNS capture on vs off, paired", "informational", f"{r:.3f}" if r else "-", None))
for load in ["bulk1", "bulk4"]:
    r = med(tp[load]["flowtel"]["paired_ratio_to_flowtel_nodns"])
    budget.append((f"{load} with DNS capture on vs off, paired", "informational", f"{r:.3f}" if r else "-", None))
for load in ["churn", "bulk1", "bulk4"]:
    r = med(tp[load]["afpacket"]["paired_ratio_to_none"])
    budget.append((f"{load}: AF_PACKET port-53 capture (tcpdump) vs none, paired", "informational", f"{r:.3f}" if r else "-", None))
if "flowtel_nodns" in kc:
    on, off = med(kc["flowtel"]["bpf_us_per_connection"]), med(kc["flowtel_nodns"]["bpf_us_per_connection"])
    per_packet = med(kc["flowtel"]["bulk_ingress"]["ns_per_call"])
    floor_packet = med(kc.get("floor_dns", {}).get("bulk_ingress", {}).get("ns_per_call")) if "floor_dns" in kc else None
    budget.append(("DNS capture: BPF per connection, on - off", "informational",
                   f"{on - off:.2f} us ({on:.2f} - {off:.2f})" if on is not None and off is not None else "-", None))
    budget.append(("DNS capture: ingress program per packet (bulk)", "informational",
                   f"{per_packet:.0f} ns (empty program: {floor_packet:.0f} ns)" if per_packet and floor_packet else "-", None))
ov_f = 1 - (med(tp["churn"]["flowtel"]["paired_ratio_to_none"]) or 1)
ov_c = 1 - (med(tp["churn"]["classic"]["paired_ratio_to_none"]) or 1)
budget.append(("churn overhead vs classic tools", "<= 0.5 x classic", f"{ov_f:.3f} vs {ov_c:.3f}", ov_f <= 0.5 * ov_c))
for arm in ["flowtel", "flowtel_nat"]:
    label = " with NAT reversal on" if arm == "flowtel_nat" else " (DNS capture on)"
    for load in ["bulk1", "bulk4"]:
        r = med(tp[load][arm]["paired_ratio_to_none"])
        budget.append((f"bulk ({load[-1]} stream{'s' if load == 'bulk4' else ''}){label} vs none", ">= 0.995", f"{r:.3f}" if r else "-", r is not None and r >= 0.995))
r = med(tp["churn"]["flowtel_nat"]["paired_ratio_to_flowtel"])
budget.append(("churn (not DNATed) with NAT reversal on vs off, paired", ">= 1.0 (not slower)", f"{r:.3f}" if r else "-", None))
for count, v in idle.items():
    budget.append((f"{int(count):,} live sockets: CPU", "<= 3% of a core", f"{v['cpu_percent_of_one_core']:.2f}%",
                   v["cpu_percent_of_one_core"] <= 3.0 if count == "100000" else None))
    budget.append((f"{int(count):,} live sockets: RSS", "<= 40 MB", f"{v['rss_mb']:.1f} MB", v["rss_mb"] <= 40 if count == "100000" else None))
if loss:
    lost = max(results["loss"]["connections_made"] - results["loss"]["flowtel_client"], 0)
    dropped = sum(results["loss"]["dropped"].values())
    ok = lost == 0 or dropped > 0
    budget.append((f"loss: {results['loss']['connections_made']:,} connections in {loss['seconds']} s",
                   "0 lost or counted", f"client {results['loss']['flowtel_client']:,}, server {results['loss']['flowtel_server']:,}, drops {dropped}", ok))
results["budget"] = [{"item": a, "target": b, "measured": c, "met": d} for a, b, c, d in budget]

# --- report
L = []
L.append(f"# flowtel benchmark ({mode})\n")
L.append(f"{results['date']}, kernel {results['kernel']}, {results['cpus']} CPUs. "
         f"Reproduce: `integration/bench/run.sh --{mode}`. Medians with (min..max) over {len(rounds)} interleaved rounds.\n")
L.append("## Budget\n\n| item | target | measured | met |\n|---|---|---|---|")
for a, b, c, d in budget:
    L.append(f"| {a} | {b} | {c} | {'yes' if d else ('no' if d is False else 'n/a')} |")
L.append("\n## Throughput (interleaved arms)\n")
L.append("| arm | churn conn/s | ratio to none | paired ratio to none | paired ratio to floor | paired ratio to flowtel | iperf3 1 stream Gbit/s | paired | iperf3 4 streams Gbit/s | paired |")
L.append("|---|---|---|---|---|---|---|---|---|---|")
for arm in ARMS:
    c, b1, b4 = tp["churn"][arm], tp["bulk1"][arm], tp["bulk4"][arm]
    L.append(f"| {arm} | {fmt(c['value'])} | {c['ratio_to_none']:.3f} | {fmt(c['paired_ratio_to_none'], digits=3)} | "
             f"{fmt(c['paired_ratio_to_floor'], digits=3)} | {fmt(c['paired_ratio_to_flowtel'], digits=3)} | {fmt(b1['value'], 1e-9, 2)} | {fmt(b1['paired_ratio_to_none'], digits=3)} | "
             f"{fmt(b4['value'], 1e-9, 2)} | {fmt(b4['paired_ratio_to_none'], digits=3)} |")
fu = results["flowtel_under_load"]
L.append(f"\nflowtel itself during those rounds: {fmt(fu['cpu_s_per_min_user'], digits=2)} CPU-s/min user, "
         f"{fmt(fu['cpu_s_per_min_system'], digits=2)} system, peak RSS {fmt(fu['peak_rss_mb'], digits=1)} MB.\n")
L.append("## Kernel cost (kernel.bpf_stats_enabled, separate runs)\n")
L.append("flowtel_nat's churn is DNATed: every connection reversed in the kernel. floor_nat adds an empty "
         "cgroup_skb egress program to floor's empty sock_ops: bpf_stats' own cost per call.\n")
L.append("| arm | BPF us per connection (both ends) | invocations per connection | BPF ns per MB of bulk | agent CPU us per connection | egress calls per MB of bulk | egress ns per call (bulk) | ingress calls per MB of bulk | ingress ns per call (bulk) |\n|---|---|---|---|---|---|---|---|---|")
for arm in STATS_ARMS:
    if arm not in kc:
        continue
    k = kc[arm]
    L.append(f"| {arm} | {fmt(k['bpf_us_per_connection'], digits=2)} | {fmt(k['invocations_per_connection'], digits=1)} | {fmt(k['bpf_ns_per_mb_bulk'], digits=0)} "
             f"| {fmt(k['agent_cpu_us_per_connection'], digits=2)} | {fmt(k['bulk_egress']['calls_per_mb'], digits=1)} | {fmt(k['bulk_egress']['ns_per_call'])} "
             f"| {fmt(k['bulk_ingress']['calls_per_mb'], digits=1)} | {fmt(k['bulk_ingress']['ns_per_call'])} |")
L.append("\n| arm | program | ns per call | calls per connection | us per connection |\n|---|---|---|---|---|")
for arm in STATS_ARMS:
    if arm not in kc:
        continue
    for name, p in kc[arm]["programs"].items():
        L.append(f"| {arm} | {name} | {fmt(p['ns_per_call'])} | {fmt(p['calls_per_connection'], digits=2)} | {fmt(p['us_per_connection'], digits=2)} |")
L.append("\n## Many live sockets (flowtel, trickle of 20 writes/s per 8k sockets)\n")
L.append("| sockets | CPU % of one core | user s | system s | window s | RSS MB | poll ms |\n|---|---|---|---|---|---|---|")
for count, v in idle.items():
    L.append(f"| {int(count):,} | {v['cpu_percent_of_one_core']:.2f} | {v['user_s']:.2f} | {v['system_s']:.2f} | {v['window_s']} | {v['rss_mb']:.1f} | {fmt(v['poll_ms'], digits=1)} |")
if loss:
    x = results["loss"]
    L.append(f"\n## Loss\n\n{x['connections_made']:,} connections in {x['seconds']} s ({x['rate']:,.0f}/s, {x['loadgen_errors']} load errors); "
             f"flowtel counted {x['flowtel_client']:,} client and {x['flowtel_server']:,} server establishments; drops: {x['dropped']}.\n")
if results["export_cost"]:
    L.append("## One export of 1000 flow pairs\n\n```\n" + results["export_cost"].strip() + "\n```\n")
open(os.path.join(out_dir, "report.md"), "w").write("\n".join(L) + "\n")
json.dump({k: v for k, v in results.items()}, open(os.path.join(out_dir, "results.json"), "w"), indent=1)

print("\n".join(L[L.index("## Budget\n\n| item | target | measured | met |\n|---|---|---|---|"):][:len(budget) + 1]))
print(f"\nreport: {os.path.join(out_dir, 'report.md')}, every figure: {os.path.join(out_dir, 'results.json')}")
