#!/usr/bin/env python3
"""Checks the files in deploy/ against promtool and against tcptrace itself.

    python3 deploy/check.py

- the alerting rules pass `promtool check rules` and their unit tests;
- every alert has a runbook_url pointing at its section of RUNBOOK.md and a
  dashboard_url pointing at the dashboard's uid and one of its panels;
- the dashboard is JSON, and every panel query, with Grafana's variables
  replaced by concrete values, is PromQL that promtool accepts;
- every metric the rules and the dashboard use is one tcptrace exports (its
  name appears in tcptrace/src), every state one tcptrace names, every
  sysctl one tcptrace reads;
- the systemd unit passes `systemd-analyze verify` (if systemd-analyze is
  installed), the Kubernetes manifests parse as YAML (if PyYAML is).

Exits 1 on the first failure. Needs promtool (Debian: prometheus).
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent
RULES = DEPLOY / "prometheus" / "tcptrace-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "tcptrace.json"
UNIT = DEPLOY / "systemd" / "tcptrace.service"
RUNBOOK = DEPLOY / "prometheus" / "RUNBOOK.md"

# Concrete values for Grafana's variables, so that promtool can parse queries.
VARIABLES = {
    "$__rate_interval": "1m",
    "$job": "tcptrace",
    "$instance": "web-1",
    "$role": "server",
    "$port": "8080",
}


def run(*command, cwd=None):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    print(f"$ {' '.join(map(str, command))}\n{result.stdout}{result.stderr}".rstrip())
    if result.returncode != 0:
        sys.exit(f"FAILED: {command[0]} exited with {result.returncode}")


def fail(message):
    sys.exit(f"FAILED: {message}")


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    queries = [
        (panel["title"], target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    if not queries:
        fail(f"{DASHBOARD} has no queries")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    if variables.get("datasource", {}).get("query") != "prometheus":
        fail("the dashboard needs a prometheus `datasource` variable")
    for name in ("instance", "role", "port"):
        if "tcptrace_sockets" not in variables.get(name, {}).get("definition", ""):
            fail(f"variable {name} must come from label_values(tcptrace_sockets, ...)")
    return queries


def substituted(expr):
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        fail(f"unknown Grafana variable in {expr}")
    return expr


def check_queries_parse(queries):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": substituted(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "dashboard-queries.yml"
        path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
        run("promtool", "check", "rules", path)


def check_names(texts):
    sources = "\n".join(p.read_text() for p in (ROOT / "tcptrace" / "src").rglob("*.rs"))
    exported = set(re.findall(r'"(tcptrace_[a-z_]+)"', sources))
    histograms = set(re.findall(r'"(tcptrace_[a-z_]+)",\s*"[^"]*",\s*MetricType::HISTOGRAM', sources))
    text = "\n".join(texts)
    for name in sorted(set(re.findall(r"\btcptrace_[a-z_]+", text))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in exported and not (base in histograms and base != name):
            fail(f"{name} is not a metric tcptrace exports")
    states = set(re.findall(r'=> "([A-Z_0-9]+)"', (ROOT / "tcptrace/src/events/mod.rs").read_text()))
    for match in re.findall(r'\bstate=~?"([^"]+)"', text):
        for state in match.split("|"):
            if state not in states:
                fail(f"state {state} is not one tcptrace names")
    for name in re.findall(r'\bname="(net\.[a-z0-9_.]+)"', text):
        if f'"{name}"' not in sources:
            fail(f"sysctl {name} is not one tcptrace exports")
    print("metric, state and sysctl names: all exported by tcptrace")


def check_alert_links():
    """Each alert's runbook_url and dashboard_url, read from the rules' text
    (the file is plain YAML of a fixed shape; no YAML parser is needed)."""
    dashboard = json.loads(DASHBOARD.read_text())
    panel_ids = set()
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        panel_ids.add(panel["id"])
        stack.extend(panel.get("panels", []))
    sections = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), re.M))
    alerts = re.split(r"^\s+- alert: ", RULES.read_text(), flags=re.M)[1:]
    for text in alerts:
        name = text.split()[0]
        runbook = re.search(r"^\s+runbook_url: \S+#(\w+)$", text, re.M)
        if not runbook or runbook.group(1) != name.lower():
            fail(f"{name}: no runbook_url ending in #{name.lower()}")
        if name not in sections:
            fail(f"{name}: no section '## {name}' in {RUNBOOK.relative_to(ROOT)}")
        link = re.search(r"^\s+dashboard_url: '[^']+/d/([\w-]+)/[^']*viewPanel=(\d+)'$", text, re.M)
        if not link or link.group(1) != dashboard["uid"] or int(link.group(2)) not in panel_ids:
            fail(f"{name}: dashboard_url is not a panel of the dashboard (uid {dashboard['uid']})")
    extra = sections - {text.split()[0] for text in alerts}
    if extra:
        fail(f"{RUNBOOK.relative_to(ROOT)}: sections for no alert: {sorted(extra)}")
    print(f"{len(alerts)} alerts: each links its runbook section and dashboard panel")


def check_unit():
    if not shutil.which("systemd-analyze"):
        print("systemd-analyze not installed: unit not verified")
        return
    # verify wants ExecStart= to exist: point it at a binary that does.
    text = UNIT.read_text().replace("/usr/local/bin/tcptrace", "/bin/true")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / UNIT.name
        path.write_text(text)
        run("systemd-analyze", "verify", path)


def check_kubernetes():
    try:
        import yaml
    except ImportError:
        print("PyYAML not installed: Kubernetes manifests not parsed")
        return
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for document in documents:
            if not {"apiVersion", "kind", "metadata"} <= document.keys():
                fail(f"{path}: a document without apiVersion, kind or metadata")
        print(f"{path.relative_to(ROOT)}: {', '.join(d['kind'] for d in documents)}")


def main():
    run("promtool", "check", "rules", RULES)
    run("promtool", "test", "rules", RULES.with_suffix(".test.yml").name, cwd=RULES.parent)
    check_alert_links()
    queries = dashboard_queries()
    print(f"{DASHBOARD.relative_to(ROOT)}: valid JSON, {len(queries)} queries")
    check_queries_parse(queries)
    check_names([RULES.read_text()] + [expr for _, expr in queries])
    check_unit()
    check_kubernetes()
    print("deploy/: all checks passed")


if __name__ == "__main__":
    main()
