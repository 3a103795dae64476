#!/usr/bin/env python3
"""Check that every PromQL expression in the monitoring assets names only metrics
that wxpush exports.

Usage: check_metrics.py METRICS_DIR FILE...

METRICS_DIR is internal/metrics (or a colon-separated list of directories; the
sibling packages in EXTRA_PACKAGES, internal/webhook, internal/api, internal/events,
internal/inbox and internal/relay, which define their own metrics, are always read too): the exported names are read
from their Go sources
(Name: "wxpush_..." in the *Opts literals and prometheus.NewDesc("wxpush_...")),
histograms adding their _bucket, _sum and _count series. Besides those, `up` and
the standard go_* and process_* collectors are allowed. FILE is a Grafana
dashboard (.json: every target "expr" and the template variable queries) or a
Prometheus rule file (.yml: every "expr:"). Standard library only, so it runs
wherever python3 does. Exits 1 naming each unknown metric and where it is used.
"""

import json
import pathlib
import re
import sys

ALLOWED_EXACT = {"up"}
# Packages beside METRICS_DIR that register metrics of their own (NewMetrics in
# the package), read along with it.
EXTRA_PACKAGES = ("webhook", "api", "events", "inbox", "relay")
ALLOWED_PREFIXES = ("go_", "process_")

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def exported_metrics(metrics_dir):
    names = set()
    for path in sorted(pathlib.Path(metrics_dir).glob("*.go")):
        if path.name.endswith("_test.go"):
            continue
        src = path.read_text()
        for m in re.finditer(r'Name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', src):
            names.add(m.group(1))
        for m in re.finditer(r'NewDesc\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', src):
            names.add(m.group(1))
        for m in re.finditer(r'HistogramOpts\{[^}]*?Name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', src, re.S):
            base = m.group(1)
            names.update({base + "_bucket", base + "_sum", base + "_count"})
    return names


def metric_names(expr):
    """The metric names an expression selects (a lexical scan, good enough for
    the expressions in these files; promtool checks their syntax)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"#[^\n]*", "", e)                                              # comments
    e = re.sub(r"\{[^}]*\}", "", e)                                            # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                           # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?[A-Za-z0-9_]+\}?", " ", e)                               # Grafana variables
    e = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?[smhdwy]?\b", " ", e)             # numbers, durations
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):          # a function or an aggregation
            continue
        if word.lower() in KEYWORDS:
            continue
        found.add(word)
    return found


def dashboard_exprs(path):
    doc = json.loads(path.read_text())
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(doc.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f'panel "{p.get("title")}" target {t.get("refId")}', t["expr"]))
    for v in doc.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q, re.S)
        if m:
            q = m.group(1)
        if q:
            out.append((f'variable "{v.get("name")}"', q))
    return out


def rule_exprs(path):
    """expr: values of a rule file, inline or as a block scalar, without YAML."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        where = f"{path.name}:{i + 1}"
        i += 1
        if value[:1] in ("|", ">"):
            body = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i])
                i += 1
            value = "\n".join(body)
        elif value[:1] in ("'", '"'):
            value = value[1:-1]
        out.append((where, value))
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    dirs = [pathlib.Path(d) for d in argv[1].split(":") if d]
    for extra in EXTRA_PACKAGES:
        sibling = dirs[0].parent / extra
        if sibling.is_dir() and sibling not in dirs:
            dirs.append(sibling)
    known = set()
    for d in dirs:
        known |= exported_metrics(d)
    if not known:
        print(f"check_metrics: no metric names found under {argv[1]}", file=sys.stderr)
        return 2
    bad, count = [], 0
    for name in argv[2:]:
        path = pathlib.Path(name)
        exprs = dashboard_exprs(path) if path.suffix == ".json" else rule_exprs(path)
        if not exprs:
            bad.append(f"{name}: no expressions found")
        for where, expr in exprs:
            count += 1
            for metric in sorted(metric_names(expr)):
                if metric in known or metric in ALLOWED_EXACT or metric.startswith(ALLOWED_PREFIXES):
                    continue
                bad.append(f"{name}: {where}: unknown metric {metric}")
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    print(f"check_metrics: {count} expressions in {len(argv) - 2} file(s) use only metrics from {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
