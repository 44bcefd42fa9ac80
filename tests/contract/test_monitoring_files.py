"""The Prometheus config, rules and Grafana dashboard in compose/ are valid, and name only metrics the services
really expose (a renamed metric fails here), for every stage."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rhd.local.up
import rhd.model_server.server  # registers the embedded model server's metrics (imports TensorFlow)
import rhd.runtime.metrics
import rhd.web.app  # noqa: F401  (registers the web page's and the drift monitor's metrics)
import yaml
from conftest import missing_tool
from prometheus_client import REGISTRY
from rhd.runtime.topics import STAGES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "compose" / "prometheus"
GRAFANA = ROOT / "compose" / "grafana"
RULE_FILES = (PROMETHEUS / "rules" / "recording.yml", PROMETHEUS / "rules" / "alerts.yml")
DASHBOARD = GRAFANA / "dashboards" / "rhd-pipeline.json"
STAGE_PORT, MODEL_SERVER_PORT = 8000, 8501
# Series Prometheus writes itself for every target.
PROMETHEUS_SERIES = {"up"}
SEVERITIES = {"critical", "warning", "info"}


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in read_yaml(path)["groups"] for rule in group["rules"]]


RECORDING_RULES = rules(PROMETHEUS / "rules" / "recording.yml")
ALERT_RULES = rules(PROMETHEUS / "rules" / "alerts.yml")
RECORDED = {rule["record"] for rule in RECORDING_RULES}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return [panel for panel in panels if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


# --- names in PromQL -----------------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels, durations or variables)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges (also [$__rate_interval])
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", expr):
        if not expr[match.end() :].lstrip().startswith("(") and match[0].lower() not in _PROMQL_KEYWORDS:
            names.add(match[0])
    return names


def test_metric_names_finds_selectors_only():
    assert metric_names(
        'histogram_quantile(0.95, sum by (model, le) (rate(rhd_x_bucket{code!="OK", a=~"b.*"}[$__rate_interval])))'
        ' / on (model) group_left sum without (le) (a:b:c offset 5m) > bool 1e3 and absent(up{job="x"} == 1)'
    ) == {"rhd_x_bucket", "a:b:c", "up"}


_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Each rhd_* metric family in the services' and the embedded model server's registry, with the names of the
    series it is exposed as (prometheus_client drops _total and _info from family names)."""
    families = {}
    for family in REGISTRY.collect():
        if family.name.startswith("rhd_"):
            families[family.name] = {family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",))}
    # Guard against a registry that lost the metrics (the checks below would then all fail, but say why here).
    assert {"rhd_messages", "rhd_stage_seconds", "rhd_consumer_lag", "rhd_build"} <= families.keys()
    assert {"rhd_model_server_batch_size", "rhd_model_server_batch_wait_seconds"} <= families.keys()
    return families


def test_rules_and_dashboard_name_only_recorded_or_exposed_metrics(exposed):
    known = RECORDED | PROMETHEUS_SERIES | set().union(*exposed.values())
    queries = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in RECORDING_RULES + ALERT_RULES]
    queries += [
        (f"dashboard panel {panel['title']!r}", target["expr"])
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]
    unknown = {where: sorted(metric_names(expr) - known) for where, expr in queries if metric_names(expr) - known}
    assert not unknown, f"names neither recorded nor exposed by any service: {unknown}"
    assert all(metric_names(expr) for _, expr in queries)


def test_every_service_metric_is_recorded_or_charted(exposed):
    used = set().union(
        *(metric_names(rule["expr"]) for rule in RECORDING_RULES + ALERT_RULES),
        *(metric_names(expr) for expr in dashboard_exprs()),
    )
    unused = sorted(family for family, series in exposed.items() if not series & used)
    assert not unused, f"metrics on no dashboard panel and in no rule: {unused}"


def test_recording_rules_are_named_level_metric_operations():
    for rule in RECORDING_RULES:
        assert re.fullmatch(r"[a-z_]+:rhd_[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_every_alert_waits_has_a_severity_texts_and_a_unit_test():
    tested = set(
        re.findall(r"alertname: *(\w+)", "".join(path.read_text() for path in (PROMETHEUS / "tests").glob("*.yml")))
    )
    assert ALERT_RULES
    for rule in ALERT_RULES:
        assert re.fullmatch(r"\d+[smh]", rule.get("for") or ""), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test in compose/prometheus/tests"


def test_every_stage_has_a_no_consumer_alert():
    no_consumers = {
        rule["labels"]["stage"]: rule["expr"] for rule in ALERT_RULES if rule["alert"] == "RhdStageNoConsumers"
    }
    assert no_consumers == {stage: f'absent(up{{job="{stage}"}} == 1)' for stage in STAGES}


def test_every_stage_and_the_model_server_is_scraped_on_every_replica():
    config = read_yaml(PROMETHEUS / "prometheus.yml")
    assert all((PROMETHEUS / path).is_file() for path in config["rule_files"])
    assert sorted(config["rule_files"]) == sorted(str(path.relative_to(PROMETHEUS)) for path in RULE_FILES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(STAGES) | {"model-server"} <= jobs.keys()
    for name, port, path in [(stage, STAGE_PORT, None) for stage in STAGES]:
        assert jobs[name].get("metrics_path") == path
        assert jobs[name]["dns_sd_configs"] == [{"names": [name], "type": "A", "port": port}], name
    assert jobs["model-server"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["model-server"]["dns_sd_configs"] == [
        {"names": ["model-server"], "type": "A", "port": MODEL_SERVER_PORT}
    ]


def test_the_dashboard_queries_the_provisioned_datasource_in_every_panel():
    datasources = read_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (provisioned,) = [source for source in datasources if source["type"] == "prometheus"]
    assert provisioned["url"] == "http://prometheus:9090"
    board = dashboard()
    assert board["uid"] == "rhd-pipeline" and board["schemaVersion"] >= 39
    panels = dashboard_panels()
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    for panel in panels:
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"]] + [target["datasource"] for target in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": provisioned["uid"]}, panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
    providers = read_yaml(GRAFANA / "provisioning" / "dashboards" / "rhd.yml")["providers"]
    assert [provider["type"] for provider in providers] == ["file"]


def raw_metrics(names: set[str]) -> set[str]:
    """The exposed metrics behind names, recording rules replaced by what they are computed from."""
    raw = names - RECORDED
    for rule in RECORDING_RULES:
        if rule["record"] in names:
            raw |= raw_metrics(metric_names(rule["expr"]))
    return raw


def test_the_dashboard_charts_what_the_alerts_watch():
    charted = raw_metrics(set().union(*(metric_names(expr) for expr in dashboard_exprs())))
    alerted = raw_metrics(set().union(*(metric_names(rule["expr"]) for rule in ALERT_RULES)))
    assert {"up", "rhd_consumer_lag", "rhd_dead_letters_total", "rhd_study_latency_seconds_bucket"} <= alerted
    assert alerted <= charted, f"alerted on but not charted: {sorted(alerted - charted)}"


# --- promtool ------------------------------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if not found:
        missing_tool("promtool not installed: `make promtool` takes it from Debian's prometheus package")
    return found


def run_promtool(*args: str | Path) -> str:
    result = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_promtool_accepts_the_config():
    output = run_promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output


def test_promtool_accepts_the_rules_and_reads_as_many_as_this_test():
    for path, rules_here in zip(RULE_FILES, (RECORDING_RULES, ALERT_RULES), strict=True):
        output = run_promtool("check", "rules", path)
        assert f"SUCCESS: {len(rules_here)} rules found" in output, output


def test_promtool_unit_tests_of_the_rules_pass():
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert len(tests) >= 2
    output = run_promtool("test", "rules", *tests)
    assert output.count("SUCCESS") == len(tests), output


def test_promtool_parses_every_dashboard_query(tmp_path):
    # Grafana's interval variables are not PromQL; any duration stands in for them.
    exprs = [re.sub(r"\$__\w+", "1m", expr) for expr in dashboard_exprs()]
    groups = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard_query_{number}", "expr": expr} for number, expr in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard.yml"
    path.write_text(json.dumps(groups))  # JSON is YAML
    output = run_promtool("check", "rules", path)
    assert f"SUCCESS: {len(exprs)} rules found" in output, output
