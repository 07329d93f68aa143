"""The Grafana dashboard (deploy/grafana/imapfront.json) and the Prometheus
alerting rules (deploy/prometheus/imapfront-rules.yml) against a live
proxy: promtool accepts the rules and their unit tests pass, the dashboard
is a well-formed Grafana model, and every metric either names, with every
label value it matches on, is in the /metrics of a running imapfront."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

import imapfront_harness as h
import ops_support as ops

SRC = os.environ.get("IMAPFRONT_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "imapfront.json")
RULES = os.path.join(SRC, "deploy", "prometheus", "imapfront-rules.yml")
RULES_TEST = os.path.join(SRC, "deploy", "prometheus", "imapfront-rules.test.yml")

# name{matchers}: the matchers of one selector; a bare name has none.
SELECTOR = re.compile(r"\b(imapfront_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*,?')


def dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def dashboard_exprs(dash):
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append(("panel %r" % p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            out.append(("variable %s" % v["name"], v["query"]["query"]))
    return out


def rule_exprs():
    with open(RULES, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return [("alert %s" % r.get("alert", r.get("record")), r["expr"])
            for g in doc["groups"] for r in g["rules"]]


def selectors(expr):
    """(metric, [(label, op, value)]) for every imapfront_ metric named."""
    out = []
    for m in SELECTOR.finditer(expr):
        matchers = []
        text = m.group(2) or ""
        pos = 0
        while pos < len(text):
            mm = MATCHER.match(text, pos)
            assert mm, "cannot read the matchers %r in %r" % (text, expr)
            matchers.append((mm.group(1), mm.group(2), mm.group(3)))
            pos = mm.end()
        out.append((m.group(1), matchers))
    return out


def test_promtool_checks_and_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; ./dev setup)")
    r = subprocess.run([promtool, "check", "rules", RULES], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    assert "SUCCESS: %d rules found" % len(rule_exprs()) in r.stdout, r.stdout
    # Each alert fires on the series it is meant for, after its `for`.
    r = subprocess.run([promtool, "test", "rules", os.path.basename(RULES_TEST)],
                       cwd=os.path.dirname(RULES_TEST), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    with open(RULES_TEST, encoding="utf-8") as f:
        tested = set(re.findall(r"alertname: (\w+)", f.read()))
    assert {"ImapfrontAllBackendsDown", "ImapfrontHandshakeFailuresRising",
            "ImapfrontCertificateExpiresSoon", "ImapfrontLiteralStalls"} <= tested, tested


def test_the_dashboard_is_a_grafana_model():
    dash = dashboard()
    assert dash["uid"] == "imapfront" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    titles = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        titles.add(p["title"])
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], "panel %r has no query" % p["title"]
        for t in p["targets"]:
            # Every query follows the instance picker.
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    # What the operations issue asked the dashboard to show.
    for want in ("Sessions open", "Logins per second", "TLS handshakes per second",
                 "TLS handshake failures, by reason", "Client bytes per second",
                 "Command latency p99", "Backend servers in rotation",
                 "Shields at work, per second"):
        assert want in titles, want


def test_every_metric_named_is_served(emulator, proxy_factory, ctx):
    # Health checks on, so that their families are served too.
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"backend": {"check": "banner", "check_interval": "100ms"}})
    with h.TLSClient(proxy.port, ctx) as c:
        c.read_line()
        for tag, cmd in (("L", "LOGIN demo demo"), ("N", "NOOP"), ("Z", "LOGOUT")):
            c.command(tag, cmd)
    m = ops.wait_metrics(
        proxy, lambda m: m.samples.get("imapfront_backend_checks_total")
        and m.get("imapfront_backend_checks_total", server=ops.addr(emulator.plain_port),
                  result="ok", default=0) > 0
        and m.get("imapfront_command_duration_seconds_count", command="LOGOUT", default=0) > 0,
        what="a passed health check and a LOGOUT counted")
    exprs = dashboard_exprs(dashboard()) + rule_exprs()
    problems = []
    named = set()
    for where, expr in exprs:
        for name, matchers in selectors(expr):
            named.add(name)
            if name not in m.samples:
                problems.append("%s: %s is not in /metrics" % (where, name))
                continue
            for label, op, value in matchers:
                if label == "instance":  # added by Prometheus, not by the proxy
                    continue
                served = {d.get(label) for d in m.labelsets(name)}
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                for v in wanted:
                    if v not in served:
                        problems.append("%s: %s has no %s=%r (served: %s)"
                                        % (where, name, label, v, sorted(map(str, served))))
    assert not problems, "\n".join(problems)
    # The dashboard and the rules between them cover what the issue asked.
    for family in ("imapfront_sessions_active", "imapfront_tls_handshake_failures_total",
                   "imapfront_client_bytes_sent_total", "imapfront_command_duration_seconds_bucket",
                   "imapfront_backend_up", "imapfront_shield_commands_held_total",
                   "imapfront_anomalies_total", "imapfront_certificate_expiry_timestamp_seconds"):
        assert family in named, family
