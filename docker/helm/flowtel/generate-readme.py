#!/usr/bin/env python3
"""Writes the chart's README.md from values.yaml, helm-docs style: every value, its default and
the comment above it.

    python3 docker/helm/flowtel/generate-readme.py [OUT]

A comment line whose text starts right after "# " describes the key below it; a line indented
further ("#  - name: ...") is an example and is left out. A key without a comment of its own
takes its parent's. Re-run after editing values.yaml; a test checks the committed README.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

HEAD = """# flowtel Helm chart

flowtel as a DaemonSet: an eBPF agent on every node that exports TCP flow metrics (bytes,
retransmits, timeouts, RTT, health per flow pair) over OpenTelemetry, and optionally on a
Prometheus `/metrics` port with a PodMonitor and the fleet's PrometheusRule.

```sh
helm install flowtel docker/helm/flowtel --namespace flowtel --create-namespace \\
  --set otlp.endpoint=http://otel-collector:4317
kubectl label namespace flowtel pod-security.kubernetes.io/enforce=privileged
```

The namespace needs the Pod Security level `privileged`: the DaemonSet uses `hostNetwork`,
`hostPID` and `hostPath` volumes, and BPF capabilities. See the repository's README ("Deploy",
"Kubernetes", "Running a fleet") for what it exports and how to read it.

## Values

This table is generated from `values.yaml` by `generate-readme.py`.

| key | default | description |
|---|---|---|
"""


def rows(lines):
    out = []
    stack = []  # (indent, key, description)
    pending = []
    i = 0
    while i < len(lines):
        raw = lines[i].rstrip("\n")
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if not stripped:
            pending = []
            i += 1
            continue
        if stripped.startswith("#"):
            text = stripped[1:]
            if text.startswith(" ") and not text.startswith("  ") and text.strip():
                pending.append(text.strip())
            i += 1
            continue
        if stripped.startswith("- ") or ":" not in stripped:
            i += 1
            continue
        key, _, value = stripped.partition(":")
        value = value.split(" #")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent_description = stack[-1][2] if stack else ""
        description = " ".join(pending) or parent_description
        pending = []
        path = ".".join([k for _, k, _ in stack] + [key])
        if value:
            out.append((path, value, description))
        else:
            # a block: its children, or a list of items written below it
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip(" ")) > indent):
                if lines[j].strip() and not lines[j].strip().startswith("#"):
                    block.append(lines[j].strip())
                j += 1
            if block and block[0].startswith("- "):
                out.append((path, " ".join(block), description))
                i = j
                continue
            stack.append((indent, key, description))
        i += 1
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "README.md")
    with open(os.path.join(HERE, "values.yaml")) as f:
        lines = f.readlines()
    table = "".join(
        f"| `{path}` | `{value.replace('|', '&#124;')}` | {description.replace('|', '&#124;')} |\n"
        for path, value, description in rows(lines)
    )
    with open(out, "w") as f:
        f.write(HEAD + table)


if __name__ == "__main__":
    main()
