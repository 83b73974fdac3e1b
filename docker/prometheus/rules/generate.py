#!/usr/bin/env python3
"""Writes flowtel's Prometheus rules and their promtool unit tests.

    python3 docker/prometheus/rules/generate.py

The fleet rollups are the same eight recording rules at six levels (zone pair, subnet pair, VPC
pair, category, monitor, workload pair): writing them by hand would invite drift, so this file
is their one definition. The fleet-health, localisation and agent rules are written out below.
Output: flowtel-rollups.rules.yml, flowtel-fleet.rules.yml and tests/*.test.yml beside this file,
and the same two rule files in the Helm chart's files/ (its PrometheusRule). Re-run after an
edit and commit the result; a test checks that the committed files are what this writes.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# pair series only: monitor rollups and the overflow series would count twice
PAIRS = 'flowtel_monitor="",otel_metric_overflow=""'
LEVELS = [
    ("zone_pair", ["flowtel_local_zone", "flowtel_peer_zone"], PAIRS),
    ("subnet_pair", ["flowtel_local_subnet", "flowtel_peer_subnet"], PAIRS),
    ("vpc_pair", ["flowtel_local_vpc", "flowtel_peer_vpc"], PAIRS),
    ("category", ["flowtel_flow_category"], PAIRS),
    ("monitor", ["flowtel_monitor"], 'flowtel_monitor!=""'),
    (
        "workload_pair",
        [
            "k8s_namespace_name",
            "k8s_deployment_name",
            "k8s_statefulset_name",
            "k8s_daemonset_name",
            "flowtel_peer_k8s_namespace_name",
            "flowtel_peer_k8s_workload_name",
            "flowtel_peer_k8s_service_name",
        ],
        PAIRS,
    ),
]


def rollups(level, by, sel):
    b = ", ".join(by)
    r = lambda metric: f"{level}:{metric}"
    return [
        (r("flowtel_tcp_bytes:rate1m"), f"sum by ({b}) (rate(flowtel_tcp_bytes_total{{{sel}}}[1m]))"),
        (
            r("flowtel_tcp_segments_sent:rate1m"),
            f'sum by ({b}) (rate(flowtel_tcp_segments_total{{{sel},network_io_direction="transmit"}}[1m]))',
        ),
        (r("flowtel_tcp_retransmits:rate1m"), f"sum by ({b}) (rate(flowtel_tcp_retransmits_total{{{sel}}}[1m]))"),
        (
            r("flowtel_tcp_retransmits:ratio_rate1m"),
            f'{r("flowtel_tcp_retransmits:rate1m")} / {r("flowtel_tcp_segments_sent:rate1m")}',
        ),
        (r("flowtel_tcp_timeouts:rate1m"), f"sum by ({b}) (rate(flowtel_tcp_timeouts_total{{{sel}}}[1m]))"),
        (
            r("flowtel_tcp_connect_failures:rate1m"),
            f'sum by ({b}) (rate(flowtel_tcp_connections_total{{{sel},flowtel_tcp_connection_outcome="failed"}}[1m]))',
        ),
        (
            r("flowtel_tcp_rtt_seconds:p50_rate1m"),
            f"histogram_quantile(0.5, sum by ({b}, le) (rate(flowtel_tcp_rtt_seconds_bucket{{{sel}}}[1m])))",
        ),
        (
            r("flowtel_tcp_rtt_seconds:p99_rate1m"),
            f"histogram_quantile(0.99, sum by ({b}, le) (rate(flowtel_tcp_rtt_seconds_bucket{{{sel}}}[1m])))",
        ),
    ]


PEER = 'flowtel_health_status{flowtel_health_scope="peer"}'
MONITOR = 'flowtel_health_status{flowtel_health_scope="monitor"}'
ZONES = "flowtel_local_zone, flowtel_peer_zone"
PEER_ID = "network_peer_address, server_port, flowtel_peer_zone"


def same_zone(expr):
    """`expr`'s zone-pair series with their local zone replaced by their peer zone (and the
    original kept apart, so that no two series collide): `X and on (zones) same_zone(X)` keeps
    the pairs within one zone, `unless` the pairs across zones."""
    inner = f'label_replace({expr}, "flowtel_source_zone", "$1", "flowtel_local_zone", "(.*)")'
    return f'label_replace({inner}, "flowtel_local_zone", "$1", "flowtel_peer_zone", "(.*)")'


# Fleet health: verdicts weighed by how many hosts see them, never the max over hosts. Every
# series of flowtel_health_status is one host's verdict on one group (0 healthy, 1 degraded).
FLEET = [
    ("instance:flowtel_health_peers_judged:count", f"count by (instance) ({PEER})"),
    ("instance:flowtel_health_peers_degraded:count", f"sum by (instance) ({PEER})"),
    (
        "instance:flowtel_health_peers_degraded:ratio",
        "instance:flowtel_health_peers_degraded:count / instance:flowtel_health_peers_judged:count",
    ),
    ("peer:flowtel_health_hosts_judging:count", f"count by ({PEER_ID}) ({PEER})"),
    ("peer:flowtel_health_hosts_degraded:count", f"sum by ({PEER_ID}) ({PEER})"),
    (
        "peer:flowtel_health_hosts_degraded:ratio",
        "peer:flowtel_health_hosts_degraded:count / peer:flowtel_health_hosts_judging:count",
    ),
    (
        "zone_pair:flowtel_health_groups_degraded:ratio",
        f"sum by ({ZONES}) ({PEER}) / count by ({ZONES}) ({PEER})",
    ),
    ("zone_pair:flowtel_health_hosts_degraded:count", f"sum by ({ZONES}) (max by ({ZONES}, instance) ({PEER}))"),
    (
        "zone_pair:flowtel_health_peers_degraded:count",
        f"sum by ({ZONES}) (max by ({ZONES}, network_peer_address) ({PEER}))",
    ),
    (
        "zone:flowtel_health_groups_degraded:ratio_within",
        "max by (flowtel_local_zone) (zone_pair:flowtel_health_groups_degraded:ratio"
        f" and on ({ZONES}) {same_zone('zone_pair:flowtel_health_groups_degraded:ratio')})",
    ),
    # a path between two zones: most of the groups from A to B degraded, seen by at least two
    # hosts towards at least two peers (one host or one peer is not a path), while A is fine
    # within itself
    (
        "zone_pair:flowtel_health_path_degraded:bool",
        "(zone_pair:flowtel_health_groups_degraded:ratio >= bool 0.5)"
        f" * on ({ZONES}) (zone_pair:flowtel_health_hosts_degraded:count >= bool 2)"
        f" * on ({ZONES}) (zone_pair:flowtel_health_peers_degraded:count >= bool 2)"
        " * on (flowtel_local_zone) group_left () (zone:flowtel_health_groups_degraded:ratio_within < bool 0.2)"
        f" unless on ({ZONES}) {same_zone('zone_pair:flowtel_health_groups_degraded:ratio')}",
    ),
    ("monitor:flowtel_health_hosts_judging:count", f"count by (flowtel_monitor) ({MONITOR})"),
    ("monitor:flowtel_health_hosts_degraded:count", f"sum by (flowtel_monitor) ({MONITOR})"),
    (
        "monitor:flowtel_fleet_health:status",
        "(monitor:flowtel_health_hosts_degraded:count / monitor:flowtel_health_hosts_judging:count >= bool 0.5)"
        " * (monitor:flowtel_health_hosts_degraded:count >= bool 2)",
    ),
    (
        "zone_pair:flowtel_fleet_health:status",
        "(zone_pair:flowtel_health_groups_degraded:ratio >= bool 0.5)"
        f" * on ({ZONES}) (zone_pair:flowtel_health_hosts_degraded:count >= bool 2)",
    ),
]

# Which direction loses segments: each end counts the retransmissions of what it sends, so a
# pair series measures the path from its local address to its peer. Where both ends run flowtel,
# the other end's series, with the two addresses swapped, measures the way back: the join.
PATH_ID = "network_local_address, network_peer_address, server_port"
SWAPPED = (
    'max without (flowtel_swap) (label_replace(label_replace(label_replace(path:flowtel_tcp_retransmits:ratio_rate1m,'
    ' "flowtel_swap", "$1", "network_local_address", "(.*)"),'
    ' "network_local_address", "$1", "network_peer_address", "(.*)"),'
    ' "network_peer_address", "$1", "flowtel_swap", "(.*)"))'
)
DIRECTIONS = [
    (
        "path:flowtel_tcp_retransmits:ratio_rate1m",
        f"sum by ({PATH_ID}) (rate(flowtel_tcp_retransmits_total{{{PAIRS}}}[1m]))"
        f" / sum by ({PATH_ID}) (rate(flowtel_tcp_segments_total{{{PAIRS},network_io_direction=\"transmit\"}}[1m]))",
    ),
    ("path:flowtel_tcp_retransmits:ratio_rate1m_reverse", SWAPPED),
]

DROPS_KERNEL = "pair_map_full|sock_storage_failed|listener_map_full|close_fold_skipped|undecodable_pair"
ALERTS = [
    {
        "alert": "FlowtelHostNetworkDegraded",
        "expr": (
            'label_replace(count by (instance) ((' + PEER + ' == 1)'
            " and on (network_peer_address, server_port) (peer:flowtel_health_hosts_degraded:count == 1)) >= 2"
            " and on (instance) (instance:flowtel_health_peers_degraded:ratio >= 0.5),"
            ' "location", "$1", "instance", "(.*)")'
        ),
        "for": "2m",
        "labels": {"severity": "warning", "fault_scope": "host"},
        "annotations": {
            "summary": "Network trouble on host {{ $labels.location }}",
            "description": "{{ $labels.location }} is degraded towards most of its peers, and no other host sees"
            " those peers degraded: the fault is on this host or its own link.",
        },
    },
    {
        "alert": "FlowtelPeerDegraded",
        "expr": (
            'label_join((peer:flowtel_health_hosts_degraded:count >= 2'
            " and peer:flowtel_health_hosts_degraded:ratio >= 0.5)"
            " unless on (flowtel_peer_zone) (zone_pair:flowtel_health_path_degraded:bool == 1),"
            ' "location", ":", "network_peer_address", "server_port")'
        ),
        "for": "2m",
        "labels": {"severity": "warning", "fault_scope": "peer"},
        "annotations": {
            "summary": "Peer {{ $labels.location }} is degraded for {{ $value }} hosts",
            "description": "At least half of the hosts that talk to {{ $labels.location }} (zone"
            " {{ $labels.flowtel_peer_zone }}) see it degraded: the fault is at that peer or service.",
        },
    },
    {
        "alert": "FlowtelZonePathDegraded",
        "expr": (
            "label_join(zone_pair:flowtel_health_path_degraded:bool == 1,"
            ' "location", " -> ", "flowtel_local_zone", "flowtel_peer_zone")'
        ),
        "for": "2m",
        "labels": {"severity": "warning", "fault_scope": "zone_path"},
        "annotations": {
            "summary": "Network path {{ $labels.location }} is degraded",
            "description": "Hosts in {{ $labels.flowtel_local_zone }} are degraded towards several peers in"
            " {{ $labels.flowtel_peer_zone }} while fine within their own zone: the fault is on the path between"
            " the two zones.",
        },
    },
    {
        "alert": "FlowtelMonitorDegraded",
        "expr": 'label_replace(monitor:flowtel_fleet_health:status == 1, "location", "$1", "flowtel_monitor", "(.*)")',
        "for": "2m",
        "labels": {"severity": "warning", "fault_scope": "monitor"},
        "annotations": {
            "summary": "Monitor {{ $labels.flowtel_monitor }} is degraded on most of its hosts",
            "description": "At least half of the hosts (and at least two) that carry monitor"
            " {{ $labels.flowtel_monitor }} judge it degraded.",
        },
    },
    {
        "alert": "FlowtelAgentDown",
        "expr": 'up{job=~".*flowtel.*"} == 0',
        "for": "5m",
        "labels": {"severity": "warning", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel agent {{ $labels.instance }} is down",
            "description": "Prometheus cannot scrape {{ $labels.instance }}.",
        },
    },
    {
        "alert": "FlowtelAgentStale",
        # a young series has too few samples to say: at least ten in the window
        "expr": (
            "sum by (instance) (changes(process_cpu_time_seconds_total[10m])) == 0"
            " and on (instance) min by (instance) (count_over_time(process_cpu_time_seconds_total[10m])) >= 10"
        ),
        "for": "5m",
        "labels": {"severity": "warning", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel agent {{ $labels.instance }} sends nothing new",
            "description": "Its CPU time has not moved for 10 minutes: the agent is stuck, or its exports stopped"
            " reaching this backend.",
        },
    },
    {
        "alert": "FlowtelAgentExportFailing",
        "expr": "increase(flowtel_agent_export_failures_total[10m]) > 0",
        "for": "10m",
        "labels": {"severity": "warning", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel agent {{ $labels.instance }} fails to export",
            "description": "OTLP exports failed in the last 10 minutes: check the collector endpoint, TLS and"
            " headers.",
        },
    },
    {
        "alert": "FlowtelKernelDrops",
        "expr": f'increase(flowtel_agent_dropped_total{{flowtel_drop_reason=~"{DROPS_KERNEL}"}}[10m]) > 0',
        "for": "0m",
        "labels": {"severity": "info", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel on {{ $labels.instance }} lost detail in the kernel ({{ $labels.flowtel_drop_reason }})",
            "description": "Folds went to the overflow bucket or were skipped: raise sampler.pair_map_capacity"
            " (pair_map_full) or sampler.listener_map_capacity (listener_map_full). Totals stay exact.",
        },
    },
    {
        "alert": "FlowtelFlowTableFull",
        "expr": 'increase(flowtel_agent_dropped_total{flowtel_drop_reason=~"flow_table_full|flow_table_evicted_for_room"}[10m]) > 0',
        "for": "10m",
        "labels": {"severity": "info", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel's flow table on {{ $labels.instance }} is full",
            "description": "Pairs were evicted early or folded into the overflow bucket: raise flows.max_pairs.",
        },
    },
    {
        "alert": "FlowtelExportDataLost",
        "expr": 'increase(flowtel_agent_dropped_total{flowtel_drop_reason=~"export_undelivered|export_superseded"}[10m]) > 0',
        "for": "0m",
        "labels": {"severity": "warning", "fault_scope": "agent"},
        "annotations": {
            "summary": "flowtel on {{ $labels.instance }} dropped exports the collector never received",
            "description": "A collector outage outlasted the queue ({{ $labels.flowtel_drop_reason }}).",
        },
    },
]


def yaml_str(s):
    # JSON strings are valid YAML scalars and need no further escaping rules
    return json.dumps(s)


def write_rules(path, groups):
    lines = ["# Generated by generate.py: edit that file, not this one.", "groups:"]
    for name, interval, rules in groups:
        lines.append(f"  - name: {name}")
        if interval:
            lines.append(f"    interval: {interval}")
        lines.append("    rules:")
        for rule in rules:
            if "alert" in rule:
                lines.append(f"      - alert: {rule['alert']}")
            else:
                lines.append(f"      - record: {rule['record']}")
            lines.append(f"        expr: {yaml_str(rule['expr'])}")
            if rule.get("for"):
                lines.append(f"        for: {rule['for']}")
            for section in ("labels", "annotations"):
                if rule.get(section):
                    lines.append(f"        {section}:")
                    for k, v in rule[section].items():
                        lines.append(f"          {k}: {yaml_str(v)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def series(name, labels, values):
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def rollup_tests():
    """One test per level: two series of each base metric under one rollup key, one under another
    (and a series that must not count), then every rule's value at 5m."""
    tests = []
    for level, by, sel in LEVELS:
        a = {label: f"a-{i}" for i, label in enumerate(by)}
        b = {label: f"b-{i}" for i, label in enumerate(by)}
        base = {"flowtel_monitor": "", "otel_metric_overflow": ""}
        if level == "monitor":
            a, b, base = {"flowtel_monitor": "m-a"}, {"flowtel_monitor": "m-b"}, {}
        ignored = (
            {"flowtel_monitor": "m-x", **a} if level != "monitor" else {"otel_metric_overflow": "true", "flowtel_flow_category": "internet"}
        )
        inputs = []
        # per second over the 1m window: a: 2 series x 60/s bytes; b: 1 series x 30/s
        for key, n, per_min in ((a, 2, 3600), (b, 1, 1800)):
            for i in range(n):
                labels = {**base, **key, "instance": f"h{i}"}
                inputs += [
                    series("flowtel_tcp_bytes_total", {**labels, "network_io_direction": "transmit"}, f"0+{per_min}x10"),
                    series("flowtel_tcp_segments_total", {**labels, "network_io_direction": "transmit"}, "0+600x10"),
                    series("flowtel_tcp_segments_total", {**labels, "network_io_direction": "receive"}, "0+900x10"),
                    series("flowtel_tcp_retransmits_total", {**labels, "flowtel_tcp_phase": "established"}, "0+6x10"),
                    series("flowtel_tcp_timeouts_total", {**labels, "flowtel_tcp_phase": "established"}, "0+60x10"),
                    series(
                        "flowtel_tcp_connections_total",
                        {**labels, "flowtel_tcp_connection_outcome": "failed", "error_type": "refused"},
                        "0+120x10",
                    ),
                    series(
                        "flowtel_tcp_connections_total",
                        {**labels, "flowtel_tcp_connection_outcome": "established"},
                        "0+600x10",
                    ),
                    series("flowtel_tcp_rtt_seconds_bucket", {**labels, "le": "0.001"}, "0+60x10"),
                    series("flowtel_tcp_rtt_seconds_bucket", {**labels, "le": "0.002"}, "0+60x10"),
                    series("flowtel_tcp_rtt_seconds_bucket", {**labels, "le": "+Inf"}, "0+60x10"),
                ]
        inputs.append(series("flowtel_tcp_bytes_total", {**ignored, "network_io_direction": "transmit"}, "0+60000x10"))
        # [1m] windows over samples a minute apart: rate = per-minute increase / 60
        exp = {
            "flowtel_tcp_bytes:rate1m": (120, 30),
            "flowtel_tcp_segments_sent:rate1m": (20, 10),
            "flowtel_tcp_retransmits:rate1m": (0.2, 0.1),
            "flowtel_tcp_retransmits:ratio_rate1m": (0.01, 0.01),
            "flowtel_tcp_timeouts:rate1m": (2, 1),
            "flowtel_tcp_connect_failures:rate1m": (4, 2),
            "flowtel_tcp_rtt_seconds:p50_rate1m": (0.0005, 0.0005),
            "flowtel_tcp_rtt_seconds:p99_rate1m": (0.00099, 0.00099),
        }
        checks = []
        for metric, (va, vb) in exp.items():
            record = f"{level}:{metric}"
            checks.append(
                {
                    "expr": record,
                    "eval_time": "5m",
                    "exp_samples": [
                        {"labels": f"{record}{{{','.join(f'{k}={json.dumps(v)}' for k, v in key.items())}}}", "value": v}
                        for key, v in ((a, va), (b, vb))
                    ],
                }
            )
        tests.append({"name": f"{level} rollups", "interval": "1m", "input_series": inputs, "promql_expr_test": checks})
    return tests


def status(instance, peer, port, zone_local, zone_peer, values, scope="peer"):
    labels = {
        "instance": instance,
        "flowtel_health_scope": scope,
        "network_peer_address": peer,
        "server_port": str(port),
        "flowtel_local_zone": zone_local,
        "flowtel_peer_zone": zone_peer,
    }
    return series("flowtel_health_status", labels, values)


# a fleet of four hosts: h1 (10.0.1.2) and h2 (10.0.2.2) in zone a, h3 (10.0.3.2) and h4
# (10.0.4.2) in zone b; every host talks to every other on port 80
HOSTS = {"h1": ("10.0.1.2", "a"), "h2": ("10.0.2.2", "a"), "h3": ("10.0.3.2", "b"), "h4": ("10.0.4.2", "b")}


def fleet(bad):
    """Every host's verdict on every other, degraded where `bad(observer, peer)` (for the first 30
    minutes; then healthy), healthy elsewhere."""
    out = []
    for obs, (_, zone) in HOSTS.items():
        for peer, (addr, peer_zone) in HOSTS.items():
            if peer != obs:
                values = "1x30 0x30" if bad(obs, peer) else "0x60"
                out.append(status(obs, addr, 80, zone, peer_zone, values))
    return out


def alert(name, labels, summary_vars):
    return {"exp_labels": {**labels}, "exp_annotations": summary_vars}


def firing(name, at, exp):
    return {"eval_time": at, "alertname": name, "exp_alerts": exp}


def localisation_tests():
    names = ["FlowtelHostNetworkDegraded", "FlowtelPeerDegraded", "FlowtelZonePathDegraded", "FlowtelMonitorDegraded"]
    ann = {a["alert"]: a for a in ALERTS}

    def expected(name, labels, subst):
        a = ann[name]
        out = {}
        for k, v in a["annotations"].items():
            for var, val in subst.items():
                v = v.replace("{{ $labels." + var + " }}", val)
            out[k] = v
        return {"exp_labels": {**a["labels"], "alertname": name, **labels}, "exp_annotations": out}

    def silent(at, but=()):
        return [firing(n, at, []) for n in names if n not in but]

    tests = []
    # one host: h1's own link loses; it is degraded towards everyone, nobody else is
    host_labels = {"instance": "h1", "location": "h1"}
    tests.append(
        {
            "name": "one host",
            "interval": "1m",
            "input_series": fleet(lambda o, p: o == "h1"),
            "alert_rule_test": [
                firing("FlowtelHostNetworkDegraded", "1m", []),
                firing("FlowtelHostNetworkDegraded", "5m", [expected("FlowtelHostNetworkDegraded", host_labels, {"location": "h1"})]),
                firing("FlowtelHostNetworkDegraded", "50m", []),
                *silent("5m", but=["FlowtelHostNetworkDegraded"]),
            ],
        }
    )
    # one peer: everyone is degraded towards h4
    addr = HOSTS["h4"][0]
    peer_labels = {"network_peer_address": addr, "server_port": "80", "flowtel_peer_zone": "b", "location": f"{addr}:80"}
    exp = expected("FlowtelPeerDegraded", peer_labels, {"location": f"{addr}:80", "flowtel_peer_zone": "b"})
    exp["exp_annotations"]["summary"] = exp["exp_annotations"]["summary"].replace("{{ $value }}", "3")
    tests.append(
        {
            "name": "one peer",
            "interval": "1m",
            "input_series": fleet(lambda o, p: p == "h4"),
            "alert_rule_test": [
                firing("FlowtelPeerDegraded", "5m", [exp]),
                firing("FlowtelPeerDegraded", "50m", []),
                *silent("5m", but=["FlowtelPeerDegraded"]),
            ],
        }
    )
    # a path between zones: every cross-zone verdict degraded, every same-zone one fine
    cross = lambda o, p: HOSTS[o][1] != HOSTS[p][1]
    path = []
    for src, dst in (("a", "b"), ("b", "a")):
        path.append(
            expected(
                "FlowtelZonePathDegraded",
                {"flowtel_local_zone": src, "flowtel_peer_zone": dst, "location": f"{src} -> {dst}"},
                {"location": f"{src} -> {dst}", "flowtel_local_zone": src, "flowtel_peer_zone": dst},
            )
        )
    tests.append(
        {
            "name": "a path between zones",
            "interval": "1m",
            "input_series": fleet(cross),
            "alert_rule_test": [
                firing("FlowtelZonePathDegraded", "5m", path),
                firing("FlowtelZonePathDegraded", "50m", []),
                *silent("5m", but=["FlowtelZonePathDegraded"]),
            ],
        }
    )
    # a clean fleet, and a single host's single bad peer: no alert
    tests.append(
        {
            "name": "clean fleet and a lone verdict",
            "interval": "1m",
            "input_series": fleet(lambda o, p: o == "h2" and p == "h3"),
            "alert_rule_test": silent("5m") + silent("20m"),
        }
    )
    # monitors: one bad host of three is not a red monitor; two of three is
    mon = lambda inst, values: series(
        "flowtel_health_status", {"instance": inst, "flowtel_health_scope": "monitor", "flowtel_monitor": "app-to-db"}, values
    )
    tests.append(
        {
            "name": "monitor fleet health weighs hosts",
            "interval": "1m",
            "input_series": [mon("h1", "1x60"), mon("h2", "0x30 1x30"), mon("h3", "0x60")],
            "alert_rule_test": [
                firing("FlowtelMonitorDegraded", "20m", []),
                firing(
                    "FlowtelMonitorDegraded",
                    "40m",
                    [expected("FlowtelMonitorDegraded", {"flowtel_monitor": "app-to-db", "location": "app-to-db"}, {"flowtel_monitor": "app-to-db"})],
                ),
            ],
            "promql_expr_test": [
                {"expr": "monitor:flowtel_fleet_health:status", "eval_time": "20m", "exp_samples": [{"labels": 'monitor:flowtel_fleet_health:status{flowtel_monitor="app-to-db"}', "value": 0}]},
                {"expr": "monitor:flowtel_fleet_health:status", "eval_time": "40m", "exp_samples": [{"labels": 'monitor:flowtel_fleet_health:status{flowtel_monitor="app-to-db"}', "value": 1}]},
            ],
        }
    )
    return tests


def fleet_health_record_tests():
    """The fleet-health recording rules on the one-peer fleet, at 5m."""
    addr = HOSTS["h4"][0]
    checks = [
        ("instance:flowtel_health_peers_judged:count", [('{instance="h1"}', 3), ('{instance="h2"}', 3), ('{instance="h3"}', 3), ('{instance="h4"}', 3)]),
        ("instance:flowtel_health_peers_degraded:count", [('{instance="h1"}', 1), ('{instance="h2"}', 1), ('{instance="h3"}', 1), ('{instance="h4"}', 0)]),
        ("instance:flowtel_health_peers_degraded:ratio", [('{instance="h1"}', 1 / 3), ('{instance="h2"}', 1 / 3), ('{instance="h3"}', 1 / 3), ('{instance="h4"}', 0)]),
        ("peer:flowtel_health_hosts_judging:count{network_peer_address=\"%s\"}" % addr, [('{network_peer_address="%s",server_port="80",flowtel_peer_zone="b"}' % addr, 3)]),
        ("peer:flowtel_health_hosts_degraded:count{network_peer_address=\"%s\"}" % addr, [('{network_peer_address="%s",server_port="80",flowtel_peer_zone="b"}' % addr, 3)]),
        ("peer:flowtel_health_hosts_degraded:ratio{network_peer_address=\"%s\"}" % addr, [('{network_peer_address="%s",server_port="80",flowtel_peer_zone="b"}' % addr, 1)]),
        ("zone_pair:flowtel_health_groups_degraded:ratio", [('{flowtel_local_zone="a",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="a",flowtel_peer_zone="b"}', 0.5), ('{flowtel_local_zone="b",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="b",flowtel_peer_zone="b"}', 0.5)]),
        ("zone_pair:flowtel_health_hosts_degraded:count", [('{flowtel_local_zone="a",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="a",flowtel_peer_zone="b"}', 2), ('{flowtel_local_zone="b",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="b",flowtel_peer_zone="b"}', 1)]),
        ("zone_pair:flowtel_health_peers_degraded:count", [('{flowtel_local_zone="a",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="a",flowtel_peer_zone="b"}', 1), ('{flowtel_local_zone="b",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="b",flowtel_peer_zone="b"}', 1)]),
        ("zone:flowtel_health_groups_degraded:ratio_within", [('{flowtel_local_zone="a"}', 0), ('{flowtel_local_zone="b"}', 0.5)]),
        ("zone_pair:flowtel_health_path_degraded:bool", [('{flowtel_local_zone="a",flowtel_peer_zone="b"}', 0), ('{flowtel_local_zone="b",flowtel_peer_zone="a"}', 0)]),
        ("zone_pair:flowtel_fleet_health:status", [('{flowtel_local_zone="a",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="a",flowtel_peer_zone="b"}', 1), ('{flowtel_local_zone="b",flowtel_peer_zone="a"}', 0), ('{flowtel_local_zone="b",flowtel_peer_zone="b"}', 0)]),
        ("monitor:flowtel_health_hosts_judging:count", []),
        ("monitor:flowtel_health_hosts_degraded:count", []),
    ]
    tests = []
    for expr, samples in checks:
        record = expr.split("{")[0]
        tests.append(
            {
                "expr": expr,
                "eval_time": "5m",
                "exp_samples": [{"labels": record + labels, "value": value} for labels, value in samples],
            }
        )
    addr_path = [
        {"expr": "zone_pair:flowtel_health_path_degraded:bool", "eval_time": "5m",
         "exp_samples": [
             {"labels": 'zone_pair:flowtel_health_path_degraded:bool{flowtel_local_zone="a",flowtel_peer_zone="b"}', "value": 1},
             {"labels": 'zone_pair:flowtel_health_path_degraded:bool{flowtel_local_zone="b",flowtel_peer_zone="a"}', "value": 1},
         ]},
    ]
    cross = lambda o, p: HOSTS[o][1] != HOSTS[p][1]
    return [
        {"name": "fleet health records (one peer)", "interval": "1m", "input_series": fleet(lambda o, p: p == "h4"), "promql_expr_test": tests},
        {"name": "fleet health records (zone path)", "interval": "1m", "input_series": fleet(cross), "promql_expr_test": addr_path},
    ]


def direction_tests():
    """A client 10.0.1.2 and its server 10.0.4.2:80, both watched: the client's sends lose 5%,
    the server's 0%. Each path series carries the other end's view of the way back."""
    client, server = "10.0.1.2", "10.0.4.2"
    def pair(local, peer, role, retrans):
        labels = {"flowtel_monitor": "", "otel_metric_overflow": "", "network_local_address": local,
                  "network_peer_address": peer, "server_port": "80", "network_tcp_handshake_role": role}
        return [
            series("flowtel_tcp_retransmits_total", {**labels, "flowtel_tcp_phase": "established"}, f"0+{retrans}x10"),
            series("flowtel_tcp_segments_total", {**labels, "network_io_direction": "transmit"}, "0+600x10"),
            series("flowtel_tcp_segments_total", {**labels, "network_io_direction": "receive"}, "0+600x10"),
        ]
    path = lambda local, peer: f'{{network_local_address="{local}",network_peer_address="{peer}",server_port="80"}}'
    return [
        {
            "name": "which direction loses segments",
            "interval": "1m",
            "input_series": pair(client, server, "client", 30) + pair(server, client, "server", 0),
            "promql_expr_test": [
                {"expr": "path:flowtel_tcp_retransmits:ratio_rate1m", "eval_time": "5m", "exp_samples": [
                    {"labels": "path:flowtel_tcp_retransmits:ratio_rate1m" + path(client, server), "value": 0.05},
                    {"labels": "path:flowtel_tcp_retransmits:ratio_rate1m" + path(server, client), "value": 0},
                ]},
                {"expr": "path:flowtel_tcp_retransmits:ratio_rate1m_reverse", "eval_time": "5m", "exp_samples": [
                    {"labels": "path:flowtel_tcp_retransmits:ratio_rate1m_reverse" + path(client, server), "value": 0},
                    {"labels": "path:flowtel_tcp_retransmits:ratio_rate1m_reverse" + path(server, client), "value": 0.05},
                ]},
            ],
        }
    ]


def agent_tests():
    up = lambda inst, values: series("up", {"job": "flowtel", "instance": inst}, values)
    cpu = lambda inst, values: series("process_cpu_time_seconds_total", {"instance": inst, "cpu_mode": "user"}, values)
    dropped = lambda inst, reason, values: series("flowtel_agent_dropped_total", {"instance": inst, "flowtel_drop_reason": reason}, values)
    failures = lambda inst, values: series("flowtel_agent_export_failures_total", {"instance": inst}, values)
    ann = {a["alert"]: a for a in ALERTS}

    def expected(name, labels):
        out = {}
        for k, v in ann[name]["annotations"].items():
            for var, val in labels.items():
                v = v.replace("{{ $labels." + var + " }}", val)
            out[k] = v
        return {"exp_labels": {**ann[name]["labels"], **labels}, "exp_annotations": out}

    return [
        {
            "name": "agent down and stale",
            "interval": "1m",
            "input_series": [up("a:9464", "1x5 0x20"), up("b:9464", "1x25"), cpu("a:9464", "0+1x5 5x20"), cpu("b:9464", "0+1x25")],
            "alert_rule_test": [
                firing("FlowtelAgentDown", "4m", []),
                firing("FlowtelAgentDown", "12m", [expected("FlowtelAgentDown", {"job": "flowtel", "instance": "a:9464"})]),
                firing("FlowtelAgentStale", "10m", []),
                firing("FlowtelAgentStale", "22m", [expected("FlowtelAgentStale", {"instance": "a:9464"})]),
            ],
        },
        {
            "name": "agent drops and export failures",
            "interval": "1m",
            "input_series": [
                dropped("a:9464", "pair_map_full", "0x10 5+5x30"),
                dropped("a:9464", "flow_table_full", "0x10 1+1x30"),
                dropped("a:9464", "export_undelivered", "0x20 3x20"),
                dropped("b:9464", "pair_map_full", "0x40"),
                failures("a:9464", "0x5 1+1x30"),
            ],
            "alert_rule_test": [
                firing("FlowtelKernelDrops", "5m", []),
                firing("FlowtelKernelDrops", "15m", [expected("FlowtelKernelDrops", {"instance": "a:9464", "flowtel_drop_reason": "pair_map_full"})]),
                firing("FlowtelFlowTableFull", "15m", []),
                firing("FlowtelFlowTableFull", "25m", [expected("FlowtelFlowTableFull", {"instance": "a:9464", "flowtel_drop_reason": "flow_table_full"})]),
                firing("FlowtelExportDataLost", "15m", []),
                firing("FlowtelExportDataLost", "22m", [expected("FlowtelExportDataLost", {"instance": "a:9464", "flowtel_drop_reason": "export_undelivered"})]),
                firing("FlowtelExportDataLost", "35m", []),
                firing("FlowtelAgentExportFailing", "10m", []),
                firing("FlowtelAgentExportFailing", "20m", [expected("FlowtelAgentExportFailing", {"instance": "a:9464"})]),
            ],
        },
    ]


def write_tests(path, rule_files, tests):
    doc = {"rule_files": [f"../{f}" for f in rule_files], "evaluation_interval": "1m", "tests": tests}
    with open(path, "w") as f:
        f.write("# Generated by generate.py: edit that file, not this one.\n")
        f.write(json.dumps(doc, indent=2) + "\n")


CHART_FILES = os.path.join(HERE, "..", "..", "helm", "flowtel", "files")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    chart = sys.argv[2] if len(sys.argv) > 2 else CHART_FILES
    os.makedirs(os.path.join(out, "tests"), exist_ok=True)
    os.makedirs(chart, exist_ok=True)
    rollup_groups = [
        (f"flowtel-rollups-{level}", None, [{"record": r, "expr": e} for r, e in rollups(level, by, sel)])
        for level, by, sel in LEVELS
    ]
    write_rules(os.path.join(out, "flowtel-rollups.rules.yml"), rollup_groups)
    write_rules(
        os.path.join(out, "flowtel-fleet.rules.yml"),
        [
            ("flowtel-fleet-health", None, [{"record": r, "expr": e} for r, e in FLEET]),
            ("flowtel-fleet-directions", None, [{"record": r, "expr": e} for r, e in DIRECTIONS]),
            ("flowtel-alerts", None, ALERTS),
        ],
    )
    for name in ("flowtel-rollups.rules.yml", "flowtel-fleet.rules.yml"):
        with open(os.path.join(out, name)) as src, open(os.path.join(chart, name), "w") as dst:
            dst.write(src.read())
    write_tests(os.path.join(out, "tests", "rollups.test.yml"), ["flowtel-rollups.rules.yml"], rollup_tests())
    write_tests(
        os.path.join(out, "tests", "fleet.test.yml"),
        ["flowtel-fleet.rules.yml"],
        fleet_health_record_tests() + localisation_tests() + direction_tests() + agent_tests(),
    )


if __name__ == "__main__":
    main()
