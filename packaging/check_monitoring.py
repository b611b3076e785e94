#!/usr/bin/env python3
"""`make check-monitoring` (in `make test`): keygate's stats as operators see them.

- Starts a real Envoy with keygate (envoy/keygate.yaml, on free ports) and the README's
  access-log recipe (README "Access log with the key id") added to its
  HttpConnectionManager; sends a request with the example key, one without a key, one
  with a forged x-api-key-id; scrapes /stats and /stats/prometheus.
- README "Stats": the table's two names for every stat are exactly what Envoy serves (both
  ways), and exactly the names in src/stats.rs.
- envoy/monitoring/keygate-alerts.yaml and keygate-dashboard.json name only metrics Envoy
  serves on /stats/prometheus; `promtool check rules` and `promtool test rules` pass.
- A real Prometheus (Debian's, when installed) scrapes that Envoy every second: each of the
  dashboard's queries answers with data, each rule's expression evaluates.
- The access log: the allowed request's line has the key's id, the others' none.
- Broken copies refused: a dashboard naming the /stats name instead of the Prometheus one,
  a rules file with a bad expression, a changed threshold the unit tests catch, a README
  table missing a row.

Run from the repository root; KEYGATE_ENVOY and KEYGATE_WASM as in the Makefile.
"""

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklib import Refused, fail, ok, passed, refused, scratch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ENVOY = os.environ.get("KEYGATE_ENVOY", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.environ.get("KEYGATE_WASM", os.path.join(ROOT, "target/wasm32-wasip1/release/keygate.wasm"))
MON = os.path.join(ROOT, "envoy/monitoring")
ALERTS = os.path.join(MON, "keygate-alerts.yaml")
ALERT_TESTS = os.path.join(MON, "keygate-alerts.test.yaml")
DASHBOARD = os.path.join(MON, "keygate-dashboard.json")
EXAMPLE_KEY = "kg_example_browse_key_replace_me"
EXAMPLE_ID = "8c3e4394-10a9-46ef-8af9-b6401ba1400d"

TMP = scratch("check-monitoring")


def readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def readme_block(text, marker, lang):
    start = text.index(marker)
    return text[start:].split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# A real Envoy


def run_envoy(access_log_block, strip_block):
    with open(os.path.join(ROOT, "envoy/keygate.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    gateway, admin, upstream = free_port(), free_port(), free_port()
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = gateway
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    cluster = config["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = upstream
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    recipe = yaml.safe_load(access_log_block)
    log_path = os.path.join(TMP, f"access-{gateway}.log")
    recipe["access_log"][0]["typed_config"]["path"] = log_path
    hcm.update(recipe)
    if strip_block is not None:
        hcm["http_filters"][:0] = yaml.safe_load(strip_block)
    text = json.dumps(config).replace("target/wasm32-wasip1/release/keygate.wasm", WASM)
    path = os.path.join(TMP, "envoy.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    proc = subprocess.Popen(
        [ENVOY, "-c", path, "--base-id", str(gateway), "--log-level", "error", "--concurrency", "1"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(TMP, "envoy.stderr"), "w"),
    )
    return proc, gateway, admin, log_path


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(strip=True):
    """Start Envoy, send three requests, return (/stats names, /stats/prometheus names with
    types, access-log lines, statuses). `strip`: with the README's header mutation filter."""
    block = readme_block(readme(), "<!-- access-log -->", "yaml")
    strip_block = readme_block(readme(), "<!-- access-log-strip -->", "yaml") if strip else None
    proc, gateway, admin, log_path = run_envoy(block, strip_block)
    try:
        deadline = time.time() + 20
        while True:
            try:
                status, _ = get(f"http://127.0.0.1:{admin}/ready")
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                with open(os.path.join(TMP, "envoy.stderr")) as f:
                    fail("Envoy with keygate and the README's access log did not start", f.read()[-3000:])
            time.sleep(0.1)
        base = f"http://127.0.0.1:{gateway}/data/query/study"
        codes = [
            get(base, {"Authorization": f"Bearer {EXAMPLE_KEY}"})[0],
            get(base)[0],
            get(base, {"x-api-key-id": "forged-id"})[0],
        ]
        if codes[1:] != [401, 401]:
            fail("requests through Envoy", f"statuses {codes}, wanted [any, 401, 401]")
        # keygate hands its counts to Envoy twice a second.
        deadline = time.time() + 5
        while True:
            _, stats = get(f"http://127.0.0.1:{admin}/stats?filter=keygate")
            counts = dict(line.split(": ", 1) for line in stats.splitlines() if ": " in line)
            if counts.get("wasmcustom.keygate.allowed") == "1" or time.time() > deadline:
                break
            time.sleep(0.1)
        if counts.get("wasmcustom.keygate.allowed") != "1" or counts.get("wasmcustom.keygate.denied.missing") != "2":
            fail("keygate's counters after 1 allowed and 2 missing", stats)
        _, prom = get(f"http://127.0.0.1:{admin}/stats/prometheus")
        if strip:
            prometheus_queries(admin)
    finally:
        proc.terminate()
        proc.wait(10)
    ok(f"a real Envoy with keygate and the README's access log{'' if strip else ', no header mutation filter'}: 3 requests ({codes[0]}, 401, 401), counted")
    stats_names = {n for n in counts if n.startswith("wasmcustom.")}
    prom_types = {}
    for line in prom.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            prom_types[m.group(1)] = m.group(2)
    with open(log_path, encoding="utf-8") as f:
        lines = [json.loads(l) for l in f if l.strip()]
    return stats_names, prom_types, lines, codes


def prometheus_queries(admin):
    """A real Prometheus scraping this Envoy every second: every dashboard query answers
    with data, every rule's expression evaluates."""
    if not shutil.which("prometheus"):
        print("  --  no prometheus: the queries are not run against a real one (apt-get install prometheus)")
        return
    port = free_port()
    root = os.path.join(TMP, "prometheus")
    os.makedirs(root)
    config = os.path.join(root, "prometheus.yml")
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "envoy", "metrics_path": "/stats/prometheus", "static_configs": [{"targets": [f"127.0.0.1:{admin}"]}]}
                ],
            },
            f,
        )
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root}/data", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def query(expr):
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = get(url)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            fail(f"Prometheus refused {expr!r}", body[:500])
        return answer["data"]["result"]

    try:
        deadline = time.time() + 30
        while True:
            try:
                # rate() needs two samples in its window.
                if query("count_over_time(keygate_allowed[1m]) >= 3"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                fail("Prometheus did not scrape Envoy's /stats/prometheus within 30 s")
            time.sleep(0.2)
        exprs = [
            e.replace("$__rate_interval", "1m").replace("$instance", ".*")
            for e in dashboard_exprs(DASHBOARD).split("\n")
            if not e.startswith("label_values(")
        ]
        for expr in exprs:
            if not query(expr):
                fail("keygate-dashboard.json: a query answers no data from a real Envoy", expr)
        with open(ALERTS, encoding="utf-8") as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
        for rule in rules:
            result = query(rule["expr"])
            if "record" in rule and not result:
                fail(f"recording rule {rule['record']} answers no data from a real Envoy", rule["expr"])
        ok(f"a real Prometheus scraping that Envoy: the dashboard's {len(exprs)} queries answer with data, the rules' {len(rules)} expressions evaluate")
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------------
# README's table


def readme_table(text):
    start = text.index("<!-- stats-table -->")
    rows = {}
    for line in text[start:].splitlines()[3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows[cells[0]] = (cells[1], cells[2])
    return rows


def source_names():
    with open(os.path.join(ROOT, "src/stats.rs"), encoding="utf-8") as f:
        return set(re.findall(r'"(keygate\.[a-z_.]+)"', f.read()))


def check_table(rows, stats_names, prom_types, src):
    if set(rows) != stats_names:
        raise Refused(f"README table vs /stats: only in README {sorted(set(rows) - stats_names)}, only in Envoy {sorted(stats_names - set(rows))}")
    if {n[len("wasmcustom."):] for n in rows} != src:
        raise Refused(f"README table vs src/stats.rs: {sorted({n[len('wasmcustom.'):] for n in rows} ^ src)}")
    keygate_prom = {n for n in prom_types if n.startswith("keygate_")}
    if {p for p, _ in rows.values()} != keygate_prom:
        raise Refused(f"README table vs /stats/prometheus: {sorted({p for p, _ in rows.values()} ^ keygate_prom)}")
    for name, (prom, kind) in rows.items():
        if prom_types[prom] != kind:
            raise Refused(f"{name}: README says {kind}, Envoy serves {prom} as a {prom_types[prom]}")


# ---------------------------------------------------------------------------------------
# Rules and dashboard


# Any identifier with keygate in it (not a recording rule's name, which has colons).
METRIC = re.compile(r"(?<![\w:])((?:[A-Za-z_][A-Za-z0-9_]*)?keygate[A-Za-z0-9_]*)(?![\w:])")


def metrics_named(text):
    return set(METRIC.findall(text))


def check_names(what, text, prom_types):
    unknown = sorted(metrics_named(text) - set(prom_types))
    if unknown:
        raise Refused(f"{what} names metrics Envoy does not serve on /stats/prometheus: {unknown}")
    if not metrics_named(text):
        raise Refused(f"{what} names no keygate metric")


def dashboard_exprs(path):
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for var in dash.get("templating", {}).get("list", []):
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return "\n".join(exprs)


def rules_exprs(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return "\n".join(r["expr"] for g in doc["groups"] for r in g["rules"])


def promtool(*args, cwd=None):
    run = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)
    if run.returncode != 0:
        raise Refused(f"promtool {' '.join(args)}: " + " ".join((run.stdout + run.stderr).split())[:300])
    return run.stdout


def check_rules(alerts, tests):
    promtool("check", "rules", alerts)
    promtool("test", "rules", os.path.basename(tests), cwd=os.path.dirname(tests))


def main():
    for tool in (ENVOY, WASM):
        if not os.path.isfile(tool):
            fail(f"missing {tool}", "run `make tools wasm`")
    if not shutil.which("promtool"):
        fail("missing promtool", "apt-get install prometheus (`make monitoring-tools`)")
    os.chdir(ROOT)
    print("Stats, alerts, dashboard, access log (envoy/monitoring/, README \"Stats\")")
    stats_names, prom_types, log_lines, codes = scrape()

    rows = readme_table(readme())
    try:
        check_table(rows, stats_names, prom_types, source_names())
        ok(f"README's stats table: {len(rows)} stats, /stats and /stats/prometheus names and types as Envoy serves them, = src/stats.rs")
        check_rules(ALERTS, ALERT_TESTS)
        ok("envoy/monitoring/keygate-alerts.yaml: promtool check rules; promtool test rules keygate-alerts.test.yaml")
        check_names("keygate-alerts.yaml", rules_exprs(ALERTS), prom_types)
        ok(f"keygate-alerts.yaml names only served metrics: {', '.join(sorted(metrics_named(rules_exprs(ALERTS))))}")
        check_names("keygate-dashboard.json", dashboard_exprs(DASHBOARD), prom_types)
        ok(f"keygate-dashboard.json: {len(metrics_named(dashboard_exprs(DASHBOARD)))} metrics, all served by Envoy")
    except Refused as e:
        fail(str(e))

    # The access log.
    if len(log_lines) != 3:
        fail("access log", f"{len(log_lines)} lines, not 3: {log_lines}")
    allowed, missing, forged = log_lines
    if allowed.get("key_id") != EXAMPLE_ID or allowed.get("key_owner") != "alice":
        fail("access log: the allowed request", allowed)
    if missing.get("key_id") is not None or forged.get("key_id") is not None or forged.get("status") != 401:
        fail("access log: the refused requests", [missing, forged])
    ok(f"README's access log: key_id {EXAMPLE_ID} (alice) on the allowed request ({codes[0]}), none on the 401s, forged x-api-key-id not logged")
    # Without the header mutation filter, the forged id is logged: why the README has it.
    _, _, unstripped, _ = scrape(strip=False)
    if unstripped[2].get("key_id") != "forged-id":
        fail("access log without the header mutation filter", f"the forged id was not logged: {unstripped}")
    ok("refused: the access log without the README's header mutation filter logs the forged x-api-key-id")

    # Broken copies.
    broken = os.path.join(TMP, "broken")
    os.makedirs(broken)
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = f.read()
    bad_dash = os.path.join(broken, "dashboard.json")
    with open(bad_dash, "w", encoding="utf-8") as f:
        f.write(dash.replace("keygate_fetch_age_seconds", "wasmcustom_keygate_fetch_age_seconds"))
    refused("a dashboard on the /stats-style name", lambda: check_names("dashboard copy", dashboard_exprs(bad_dash), prom_types))
    with open(ALERTS, encoding="utf-8") as f:
        alerts = f.read()
    for name, text in [("bad-expr", alerts.replace("> 300", "> > 300")), ("threshold", alerts.replace("> 300", "> 3000"))]:
        with open(os.path.join(broken, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(text)
    with open(ALERT_TESTS, encoding="utf-8") as f:
        tests = f.read()
    for name in ("bad-expr", "threshold"):
        with open(os.path.join(broken, f"{name}.test.yaml"), "w", encoding="utf-8") as f:
            f.write(tests.replace("- keygate-alerts.yaml", f"- {name}.yaml"))
    refused("alert rules with a bad expression", check_rules, os.path.join(broken, "bad-expr.yaml"), os.path.join(broken, "bad-expr.test.yaml"))
    refused("KeygateKeySetStale at 3000 s (its unit test)", check_rules, os.path.join(broken, "threshold.yaml"), os.path.join(broken, "threshold.test.yaml"))
    short = dict(rows)
    short.pop("wasmcustom.keygate.fetch.age_seconds")
    refused("the README table without fetch.age_seconds", check_table, short, stats_names, prom_types, source_names())
    shutil.rmtree(TMP, ignore_errors=True)
    refusals = sum(1 for p in passed if p.startswith("refused"))
    print(f"check-monitoring: all {len(passed)} checks passed ({refusals} of them broken copies refused)")


if __name__ == "__main__":
    main()
