"""The deployment files of deploy/ are checked offline, as far as this machine can:

- the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate, strict:
  an unknown field fails), for the oldest and a recent Kubernetes version they are meant for;
- the prometheus-operator objects (PodMonitor, ServiceMonitor, PrometheusRule) against the
  models generated from the operator's CRD schemas (cloudcoil-models-prometheus-operator:
  types, enums, patterns, required fields; an unknown field is one the model drops);
- the PrometheusRule is what deploy/generate_prometheusrule.py makes of
  alerts/replwatch.rules.yml, its spec.groups are the rules file's groups, and its rules pass
  `promtool check rules` and the rules file's own promtool unit tests (alerts/tests/);
- what the manifests must agree on: selectors and pod labels, the port in the config and in
  the probes, Services and monitors, the config's secret files and the Secret's mount, the
  monitors' job label and the alert ReplwatchDown's job=~"replwatch.*";
- the StatefulSet's container command, run with sh: the pod ordinal becomes --shard i/n,
  and every shard's config loads;
- each workload's container command run in a bubblewrap sandbox built like its pod (the
  ConfigMap, Secret, state and /tmp volumes where it mounts them, a read-only root, user
  65532 without capabilities): its probes' paths answer and it stops on SIGTERM;
- the systemd unit with `systemd-analyze verify` (any warning fails) and
  `systemd-analyze security --offline` (exposure at most 2.0), its config example with the
  unit's credentials, and a daemon started as the unit starts it (ExecStart, the
  credentials and state directories systemd passes, UMask, NoNewPrivileges and
  MemoryDenyWriteExecute by prctl; by bubblewrap a read-only system but for the state
  directory, an unprivileged user, and the seccomp filter of its SystemCallFilter= and
  RestrictAddressFamilies=), reloaded by its ExecReload and stopped by SIGTERM;
- the Prometheus scrape examples of deploy/prometheus with `promtool check config` (their
  file_sd target files and rule files included);
- docs/deployment.md embeds exactly the files it shows, and names only files of deploy/,
  alerts/, scripts/ and tests/ that exist.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib.util
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from replwatch.config import load_config
from replwatch.config.loading import apply_shard, config_from_data
from replwatch.tasks.task_state import state_dir_of
from replwatch.topology.sharding import owner

from .support.daemons import child_pids, fetch, parse_metrics, sample_value
from .support.servers import RedisProcess, ServerSet, free_port, in_ci, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "replwatch.service"
SYSTEMD_CONFIG = SYSTEMD / "config.yaml"
PROM_EXAMPLES = DEPLOY / "prometheus"
GENERATOR = DEPLOY / "generate_prometheusrule.py"
RULES = ROOT / "alerts" / "replwatch.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
DOC = ROOT / "docs" / "deployment.md"

# The oldest Kubernetes the manifests are for (the pod-index label is there from 1.28) and a
# recent one; both are among the schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.28", "1.33")
OPERATOR_GROUP = "monitoring.coreos.com/"


# ----------------------------------------------------------------------------- helpers


def _load_manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


MANIFESTS = _load_manifests()
CORE = [(p, d) for p, d in MANIFESTS if not d["apiVersion"].startswith(OPERATOR_GROUP)]
OPERATOR = [(p, d) for p, d in MANIFESTS if d["apiVersion"].startswith(OPERATOR_GROUP)]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return copy.deepcopy(found[0])


def workloads() -> list[dict[str, Any]]:
    return [manifest("Deployment", "replwatch"), manifest("StatefulSet", "replwatch-shard")]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["replwatch"]
    return dict(containers[0])


def configmap_config() -> dict[str, Any]:
    data = yaml.safe_load(manifest("ConfigMap", "replwatch-config")["data"]["config.yaml"])
    assert isinstance(data, dict)
    return data


def mounts(workload: dict[str, Any]) -> dict[str, str]:
    """volume name → mountPath of the replwatch container."""
    return {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}


def replwatchdown_job_regex() -> re.Pattern[str]:
    rules = yaml.safe_load(RULES.read_text())
    (expr,) = [
        r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ReplwatchDown"
    ]
    found = re.search(r'job=~"([^"]+)"', expr)
    assert found, expr
    return re.compile(found.group(1))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed (Debian package prometheus; scripts/test installs it)")
    return path


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not installed (Debian package systemd; scripts/test)")
    return path


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting of a unit file, in order (keys repeat)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == section and k == key]


def unit_credentials() -> dict[str, str]:
    """LoadCredential= of the unit: credential ID → the file systemd reads it from."""
    out = {}
    for value in unit_values("LoadCredential"):
        cred_id, _, source = value.partition(":")
        out[cred_id] = source
    return out


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120, **kwargs)


# ----------------------------------------------------------------------------- Kubernetes


def test_the_manifests_are_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in MANIFESTS)
    assert kinds == [
        ("ConfigMap", "replwatch-config"),
        ("Deployment", "replwatch"),
        ("PodMonitor", "replwatch"),
        ("PrometheusRule", "replwatch"),
        ("Secret", "replwatch-secrets"),
        ("Service", "replwatch"),
        ("Service", "replwatch-shard"),
        ("ServiceMonitor", "replwatch"),
        ("StatefulSet", "replwatch-shard"),
    ]
    # no namespace is written in: `kubectl apply -n <yours>` places them
    assert all("namespace" not in d["metadata"] for _, d in MANIFESTS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", CORE, ids=_id)
def test_core_manifests_match_the_kubernetes_schema(
    item: tuple[Path, dict[str, Any]], version: str
) -> None:
    import kubernetes_validate

    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{_id(item)} against Kubernetes {version}: {where}: {exc.message}")


def test_the_strict_schema_check_fails_an_unknown_or_wrong_field() -> None:
    import kubernetes_validate

    deployment = manifest("Deployment", "replwatch")
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def _dropped_fields(given: Any, kept: Any, path: str) -> list[str]:
    """The keys of `given` that the model's dump `kept` lacks: fields the CRD does not know."""
    out: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}")
            else:
                out += _dropped_fields(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        assert len(given) == len(kept), path
        for i, (a, b) in enumerate(zip(given, kept, strict=True)):
            out += _dropped_fields(a, b, f"{path}[{i}]")
    return out


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """What the prometheus-operator CRD schema (as cloudcoil's generated model) refuses."""
    from cloudcoil.models.prometheus_operator import v1
    from pydantic import ValidationError

    if doc.get("apiVersion") != OPERATOR_GROUP + "v1":
        return [f"apiVersion: {doc.get('apiVersion')!r} is not {OPERATOR_GROUP}v1"]
    model = getattr(v1, doc["kind"])
    try:
        obj = model.model_validate(doc)
    except ValidationError as exc:
        return [
            ".".join(str(p) for p in error["loc"]) + ": " + error["msg"] for error in exc.errors()
        ]
    kept = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{where}: unknown field" for where in _dropped_fields(doc, kept, "")]


@pytest.mark.parametrize("item", OPERATOR, ids=_id)
def test_operator_objects_match_the_crd_schema(item: tuple[Path, dict[str, Any]]) -> None:
    assert crd_problems(item[1]) == []


def test_the_crd_check_fails_an_unknown_or_wrong_field() -> None:
    podmonitor = manifest("PodMonitor", "replwatch")
    assert crd_problems(podmonitor) == []
    typo = copy.deepcopy(podmonitor)
    typo["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert crd_problems(typo) == [".spec.podMetricsEndpoints[0].intervall: unknown field"]
    scheme = copy.deepcopy(podmonitor)
    scheme["spec"]["podMetricsEndpoints"][0]["scheme"] = "ftp"
    assert crd_problems(scheme) and "podMetricsEndpoints.0.scheme" in crd_problems(scheme)[0]
    rule = manifest("PrometheusRule", "replwatch")
    bad_for = copy.deepcopy(rule)
    bad_for["spec"]["groups"][1]["rules"][0]["for"] = "five minutes"
    assert crd_problems(bad_for)


# ----------------------------------------------------------------------------- PrometheusRule


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_generate_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    committed = (K8S / "prometheusrule.yaml").read_text()
    assert committed == _generator().render(RULES.read_text()), (
        "deploy/kubernetes/prometheusrule.yaml is stale: run deploy/generate_prometheusrule.py"
    )
    result = run(sys.executable, str(GENERATOR), "--check")
    assert result.returncode == 0, result.stderr
    # the same rules, as data: spec.groups is the rules file's groups
    assert manifest("PrometheusRule", "replwatch")["spec"] == yaml.safe_load(RULES.read_text())


def test_the_generator_notices_a_drifted_file(tmp_path: Path, capsys: Any) -> None:
    generator = _generator()
    generator.OUTPUT = tmp_path / "prometheusrule.yaml"
    generator.OUTPUT.write_text((K8S / "prometheusrule.yaml").read_text().replace("5m", "6m"))
    assert generator.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


def _prometheusrule_rules_file(tmp_path: Path) -> Path:
    rules = tmp_path / "from-prometheusrule.rules.yml"
    rules.write_text(yaml.safe_dump(manifest("PrometheusRule", "replwatch")["spec"]))
    return rules


def test_prometheusrule_rules_pass_promtool(tmp_path: Path) -> None:
    rules = _prometheusrule_rules_file(tmp_path)
    result = run(promtool(), "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # the rules file's unit tests, run against the PrometheusRule's rules
    assert RULE_TESTS
    tests = []
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text())
        assert data["rule_files"] == ["../replwatch.rules.yml"], path
        data["rule_files"] = [str(rules)]
        copy_path = tmp_path / path.name
        copy_path.write_text(yaml.safe_dump(data, sort_keys=False))
        tests.append(str(copy_path))
    result = run(promtool(), "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- agreement


def test_selectors_select_their_own_pods() -> None:
    services = {
        "replwatch": manifest("Deployment", "replwatch"),
        "replwatch-shard": manifest("StatefulSet", "replwatch-shard"),
    }
    for service_name, workload in services.items():
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        service = manifest("Service", service_name)
        assert service["spec"]["selector"].items() <= pod_labels.items()
        # …and not the other workload's pods
        for other in services.values():
            if other is not workload:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not service["spec"]["selector"].items() <= other_labels.items()
                assert not selector.items() <= other_labels.items()
    sts = manifest("StatefulSet", "replwatch-shard")
    assert sts["spec"]["serviceName"] == "replwatch-shard"
    assert manifest("Service", "replwatch-shard")["spec"]["clusterIP"] == "None"


def test_ports_probes_and_the_configured_listen_address_agree() -> None:
    listen = configmap_config()["exporter"]["listen"]
    host, _, port = listen.rpartition(":")
    assert host in ("0.0.0.0", "[::]", ""), f"{listen}: the kubelet and Prometheus cannot reach it"
    for workload in workloads():
        c = container(workload)
        assert c["ports"] == [{"name": "metrics", "containerPort": int(port)}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    for name in ("replwatch", "replwatch-shard"):
        (port_spec,) = manifest("Service", name)["spec"]["ports"]
        assert port_spec["name"] == "metrics" and port_spec["targetPort"] == "metrics"
    podmonitor = manifest("PodMonitor", "replwatch")
    assert [e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    servicemonitor = manifest("ServiceMonitor", "replwatch")
    assert [e["port"] for e in servicemonitor["spec"]["endpoints"]] == ["metrics"]


def test_monitors_scrape_every_replwatch_pod_as_a_job_replwatchdown_watches() -> None:
    job = replwatchdown_job_regex()
    podmonitor = manifest("PodMonitor", "replwatch")["spec"]
    servicemonitor = manifest("ServiceMonitor", "replwatch")["spec"]
    for workload in workloads():
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert podmonitor["selector"]["matchLabels"].items() <= pod_labels.items()
        # the job label's value is the pods' label named by jobLabel
        assert job.fullmatch(pod_labels[podmonitor["jobLabel"]]), pod_labels
    for name in ("replwatch", "replwatch-shard"):
        service_labels = manifest("Service", name)["metadata"]["labels"]
        assert servicemonitor["selector"]["matchLabels"].items() <= service_labels.items()
        assert job.fullmatch(service_labels[servicemonitor["jobLabel"]]), service_labels


def test_both_workloads_run_the_same_hardened_pod() -> None:
    deployment, statefulset = workloads()
    pod_d, pod_s = deployment["spec"]["template"]["spec"], statefulset["spec"]["template"]["spec"]
    for key in ("volumes", "securityContext", "automountServiceAccountToken"):
        assert pod_d[key] == pod_s[key], key
    c_d, c_s = container(deployment), container(statefulset)
    for key in ("image", "ports", "volumeMounts", "securityContext", "resources"):
        assert c_d[key] == c_s[key], key
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c_d[probe] == c_s[probe], probe
    assert pod_d["automountServiceAccountToken"] is False
    assert pod_d["securityContext"]["runAsNonRoot"] is True
    assert pod_d["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c_d["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # one replwatch at a time for the Deployment (two would both run the sync tasks)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_the_image_is_the_marked_placeholder_of_this_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in workloads():
        assert container(workload)["image"] == f"registry.example.com/replwatch:{version}"


def test_configmap_config_loads_with_the_mounted_secret(tmp_path: Path) -> None:
    """The config, as the pod sees it: the Secret's keys are files under its mountPath, and
    every password_file / token_file names one of them; sync.state_dir is the writable
    volume."""
    cfg = configmap_config()
    secret = manifest("Secret", "replwatch-secrets")
    for workload in workloads():
        paths = mounts(workload)
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "replwatch-config"
        assert volumes["secrets"]["secret"]["secretName"] == "replwatch-secrets"
        assert "emptyDir" in volumes["state"]
        assert cfg["sync"]["state_dir"] == paths["state"]
        assert container(workload)["securityContext"]["readOnlyRootFilesystem"] is True
    secret_dir = mounts(workload)["secrets"]
    text = yaml.safe_dump(cfg)
    named = re.findall(r"(?:password_file|token_file): (\S+)", text)
    assert named, "the example config names no secret file"
    for path in named:
        assert path.startswith(secret_dir + "/"), path
        assert path.removeprefix(secret_dir + "/") in secret["stringData"], path
    # load it with the secret's files where the mount puts them
    files = tmp_path / "secrets"
    files.mkdir()
    for key, value in secret["stringData"].items():
        (files / key).write_text(value)
    loaded = config_from_data(yaml.safe_load(text.replace(secret_dir + "/", f"{files}/")), env={})
    assert loaded.groups and all(g.auth is None or g.auth.password for g in loaded.groups)
    assert loaded.exporter.port == 9750


# ----------------------------------------------------------------------------- shards


def _shard_command(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The StatefulSet's container command, run by sh with `env` (the pod's environment)
    and a `replwatch` on PATH that prints the arguments it was given."""
    c = container(manifest("StatefulSet", "replwatch-shard"))
    command = c["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3
    fake = tmp_path / "bin" / "replwatch"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    path = f"{fake.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return run("/bin/sh", "-c", command[2], env={"PATH": path, **env})


def _shard_env() -> dict[str, str]:
    c = container(manifest("StatefulSet", "replwatch-shard"))
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


@pytest.mark.parametrize(
    ("pod_index", "hostname", "shard"),
    [
        ("0", "replwatch-shard-0", "1/3"),
        ("2", "replwatch-shard-2", "3/3"),
        ("", "replwatch-shard-1", "2/3"),  # no pod-index label (Kubernetes before 1.28)
        (None, "replwatch-shard-2", "3/3"),
        ("1", "renamed-host", "2/3"),  # the label wins over the host name
    ],
)
def test_the_pod_ordinal_becomes_the_shard(
    tmp_path: Path, pod_index: str | None, hostname: str, shard: str
) -> None:
    env = {**_shard_env(), "HOSTNAME": hostname}
    if pod_index is not None:
        env["POD_INDEX"] = pod_index
    result = _shard_command(tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["run", "-c", "/etc/replwatch/config.yaml", "--shard", shard]


@pytest.mark.parametrize("hostname", ["replwatch", "replwatch-shard-x", ""])
def test_no_pod_ordinal_is_an_error(tmp_path: Path, hostname: str) -> None:
    result = _shard_command(tmp_path, {**_shard_env(), "HOSTNAME": hostname, "POD_INDEX": ""})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "replwatch-shard: no pod ordinal" in result.stderr


def test_shards_match_the_replicas_and_every_shard_config_loads(tmp_path: Path) -> None:
    sts = manifest("StatefulSet", "replwatch-shard")
    replicas = sts["spec"]["replicas"]
    assert _shard_env()["SHARDS"] == str(replicas), "env SHARDS must equal spec.replicas"
    pod_index = [e for e in container(sts)["env"] if e["name"] == "POD_INDEX"]
    assert pod_index[0]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    secret_dir = mounts(sts)["secrets"]
    files = tmp_path / "secrets"
    files.mkdir()
    for key, value in manifest("Secret", "replwatch-secrets")["stringData"].items():
        (files / key).write_text(value)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(configmap_config()).replace(secret_dir + "/", f"{files}/"))
    owned: list[str] = []
    for ordinal in range(replicas):
        result = _shard_command(
            tmp_path, {**_shard_env(), "HOSTNAME": f"replwatch-shard-{ordinal}"}
        )
        shard = result.stdout.split()[-1]
        cfg = apply_shard(load_config(config, env={}), str(config), shard)
        assert cfg.shard is not None and (cfg.shard.index, cfg.shard.count) == (ordinal + 1, 3)
        owned += [g.name for g in cfg.groups]
    assert sorted(owned) == sorted(g["name"] for g in configmap_config()["groups"])


# ----------------------------------------------------------------------------- systemd


def _unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart binary replaced by an executable that exists here
    (systemd-analyze verify checks that it does); nothing else changed."""
    text = UNIT.read_text() if text is None else text
    (exec_start,) = unit_values("ExecStart")
    binary = shlex.split(exec_start)[0]
    stand_in = tmp_path / "bin" / "replwatch"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    assert text.count(binary) == 1
    unit = tmp_path / "replwatch.service"
    unit.write_text(text.replace(binary, str(stand_in)))
    return unit


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    result = run(systemd_analyze(), "verify", "--man=no", str(_unit_copy(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    # a warning (unknown key, bad value, missing binary) is a failure too
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
        (("Restart=on-failure", "Restart=sometimes"), "Failed to parse"),
        (("/bin/kill -HUP", "/nonexistent/kill -HUP"), "not executable"),
    ],
)
def test_systemd_verify_catches_a_broken_unit(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    text = UNIT.read_text()
    assert change[0] in text
    unit = _unit_copy(tmp_path, text.replace(change[0], change[1]))
    result = run(systemd_analyze(), "verify", "--man=no", str(unit))
    assert complaint in result.stdout + result.stderr


def test_systemd_unit_exposure_is_ok(tmp_path: Path) -> None:
    result = run(
        systemd_analyze(), "security", "--offline=true", "--no-pager", str(_unit_copy(tmp_path))
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0 and found.group(2) == "OK", result.stdout


def test_systemd_unit_settings() -> None:
    (exec_start,) = unit_values("ExecStart")
    assert shlex.split(exec_start)[1:] == ["run", "-c", "/etc/replwatch/config.yaml"]
    assert unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_values("DynamicUser") == ["yes"]
    assert unit_values("ProtectSystem") == ["strict"]
    assert unit_values("StateDirectory") == ["replwatch"]
    assert unit_values("Restart") == ["on-failure"]
    assert unit_values("RestartPreventExitStatus") == ["2"]  # replwatch's config error
    assert unit_values("KillMode") == ["mixed"]  # replwatch stops its task processes itself
    assert unit_values("NoNewPrivileges") == ["yes"]
    assert unit_values("MemoryDenyWriteExecute") == ["yes"]
    assert unit_values("UMask") == ["0077"]
    assert unit_credentials()
    assert all(
        source.startswith("/etc/replwatch/credentials/") for source in unit_credentials().values()
    )


def test_systemd_config_names_exactly_the_units_credentials(tmp_path: Path) -> None:
    text = SYSTEMD_CONFIG.read_text()
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    named = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/([\w.-]+)", live))
    assert named == set(unit_credentials())
    # the config as the service loads it: systemd's two directories in its environment
    creds = tmp_path / "credentials"
    creds.mkdir()
    for cred_id in unit_credentials():
        (creds / cred_id).write_text(f"secret-of-{cred_id}\n")
    state = tmp_path / "state"
    env = {"CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": str(state)}
    cfg = load_config(SYSTEMD_CONFIG, env=env)
    (group,) = cfg.groups
    assert group.auth is not None and group.auth.password is not None
    assert group.auth.password.get_secret_value() == "secret-of-redis-password"
    assert state_dir_of(cfg, "/etc/replwatch/config.yaml") == state
    assert cfg.exporter.port == 9750
    # outside systemd (no CREDENTIALS_DIRECTORY) it says what is missing
    with pytest.raises(Exception, match="CREDENTIALS_DIRECTORY is not set"):
        load_config(SYSTEMD_CONFIG, env={})


def test_a_web_config_and_its_files_can_be_credentials(tmp_path: Path) -> None:
    """exporter.web_config: ${CREDENTIALS_DIRECTORY}/web.yml, its certificate and key loaded
    as credentials too: the web config's relative paths are read from its own directory,
    so they find the other credentials (docs/deployment.md, "Secrets, in short")."""
    from replwatch.config.web import load_web_config

    from .support.tlsfiles import make_pki

    pki = make_pki(tmp_path / "pki")
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(pki.server.cert, creds / "web.crt")
    shutil.copy(pki.server.key, creds / "web.key")
    (creds / "web.yml").write_text("tls_server_config: {cert_file: web.crt, key_file: web.key}\n")
    (creds / "redis-password").write_text("pw\n")
    data = yaml.safe_load(SYSTEMD_CONFIG.read_text())
    data["exporter"]["web_config"] = "${CREDENTIALS_DIRECTORY}/web.yml"
    cfg = config_from_data(data, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.exporter.web_config == creds / "web.yml"
    web, context = load_web_config(cfg.exporter.web_config)
    assert context is not None and web.tls_server_config is not None
    assert web.tls_server_config.key_file == creds / "web.key"


PASSWORD = "unit-pa55-Qx7"
ADMIN_TOKEN = "unit-admin-T0k"
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN = 38, 65, 1


def _as_the_unit_runs_it() -> None:
    """preexec_fn: UMask=0077, NoNewPrivileges=yes and MemoryDenyWriteExecute=yes (systemd
    sets the last with the same prctl where the kernel has it)."""
    os.umask(0o077)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")


def _mdwe_supported() -> bool:
    probe = (
        "import ctypes, mmap\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"assert libc.prctl({PR_SET_MDWE}, {MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except OSError:\n"
        "    raise SystemExit(0)\n"
        "raise SystemExit(1)\n"
    )
    return run(sys.executable, "-c", probe).returncode == 0


def _syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups (`systemd-analyze syscall-filter`): @name → members."""
    out = run(systemd_analyze(), "syscall-filter", "--no-pager").stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if not line[0].isspace() and name.startswith("@"):
            current = groups.setdefault(name, [])
        elif current is not None:
            current.append(name)
    return groups


def unit_syscalls() -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow: the first list, less
    every `~` list after it (systemd's meaning of the lines, in order)."""
    groups = _syscall_groups()

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(member) for member in groups[name]))

    allowed: set[str] | None = None
    for value in unit_values("SystemCallFilter"):
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        if value.startswith("~"):
            assert allowed is not None, "an allow list comes first"
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    assert allowed, "the unit has no SystemCallFilter="
    return allowed


class _ArgCmp(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


ADDRESS_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}


def unit_seccomp_program(path: Path) -> None:
    """Write to `path` the seccomp BPF program of the unit's SystemCallFilter= (the rest
    fails with SystemCallErrorNumber=, EPERM) and RestrictAddressFamilies= (socket() of
    another family fails), built with libseccomp as systemd builds its own."""
    (errno_name,) = unit_values("SystemCallErrorNumber")
    errno_value = {"EPERM": 1}[errno_name]
    families = [
        ADDRESS_FAMILIES[f] for v in unit_values("RestrictAddressFamilies") for f in v.split()
    ]
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, scmp_cmp_eq = 0x7FFF0000, 4
    ctx = lib.seccomp_init(0x00050000 | errno_value)  # SCMP_ACT_ERRNO(errno)
    assert ctx
    try:
        for name in sorted(unit_syscalls()):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a system call of this architecture
            if name == "socket":
                for family in families:
                    cmp = _ArgCmp(0, scmp_cmp_eq, family, 0)
                    assert lib.seccomp_rule_add_array(ctx, allow, number, 1, ctypes.byref(cmp)) == 0
            else:
                assert lib.seccomp_rule_add_array(ctx, allow, number, 0, None) == 0, name
        with path.open("wb") as out:
            assert lib.seccomp_export_bpf(ctx, out.fileno()) == 0
    finally:
        lib.seccomp_release(ctx)


SANDBOX_UID = 61234  # DynamicUser=yes: some unprivileged user


def _this_checkout() -> str:
    """PYTHONPATH that imports this checkout's replwatch (bound into the sandbox) whatever
    checkout an editable install points at."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _sandbox(
    argv: list[str], read_only: list[Path], writable: list[Path], seccomp_fd: int
) -> list[str]:
    """`argv` in what bubblewrap can build of the unit's sandbox: the whole file system
    read-only (ProtectSystem=strict) but `writable` (StateDirectory=), a private /tmp
    (PrivateTmp=) where only `read_only` (the config, the credentials) are seen, a minimal
    /dev (PrivateDevices=), an unprivileged user in its own user namespace without
    capabilities (DynamicUser=, PrivateUsers=, CapabilityBoundingSet=), and the seccomp
    program read from `seccomp_fd` (unit_seccomp_program: SystemCallFilter=,
    RestrictAddressFamilies=). Popen needs pass_fds=[seccomp_fd]."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail("bwrap not installed (Debian package bubblewrap; scripts/test installs it)")
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    # this checkout and its Python stay visible where the private /tmp would hide them
    for path in [*sorted({ROOT, Path(sys.prefix), Path(sys.base_prefix)}), *read_only]:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    uid = str(SANDBOX_UID)
    args += ["--unshare-user", "--uid", uid, "--gid", uid, "--cap-drop", "ALL"]
    args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--die-with-parent", "--chdir", "/", "--", *argv]


def _sandbox_works(tmp_path: Path, program: Path) -> str | None:
    """None, or why bubblewrap cannot build the sandbox on this machine: inside, the user
    is not root, only the writable directory takes a file, and a system call the unit's
    filter leaves out (setpriority, of @resources) is refused."""
    probe = tmp_path / "sandbox-probe"
    probe.mkdir()
    refused = f"{sys.executable} -c 'import os; os.setpriority(os.PRIO_PROCESS, 0, 1)'"
    script = (
        f"id -u; touch {probe}/w && ! touch /etc/replwatch-sandbox-probe 2>/dev/null"
        f" && ! {refused} 2>/dev/null"
    )
    with program.open("rb") as bpf:
        args = _sandbox(["/bin/sh", "-c", script], [], [probe], bpf.fileno())
        result = run(*args, pass_fds=[bpf.fileno()])
    if result.returncode != 0 or result.stdout.split() != [str(SANDBOX_UID)]:
        return f"bwrap: {result.returncode}: {result.stdout}{result.stderr}"
    return None


def _descendants(pid: int) -> list[int]:
    out = []
    for child in child_pids(pid):
        out += [child, *_descendants(child)]
    return out


@pytest.fixture
def unit_world(debian_servers: ServerSet) -> dict[str, RedisProcess]:
    """A master that wants a password (its ACL user replwatch-monitor, as the config
    example names it) and a sync target."""
    master = debian_servers.start("master", extra=["--requirepass", PASSWORD])
    with master.client() as client:
        client.execute_command(
            "ACL", "SETUSER", "replwatch-monitor", "on", f">{PASSWORD}", "~*", "&*", "+@all"
        )
    return {"master": master, "target": debian_servers.start("target")}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("state_dir", ["configured", "default"])
def test_the_daemon_runs_as_the_unit_runs_it(
    unit_world: dict[str, RedisProcess], tmp_path: Path, state_dir: str
) -> None:
    """deploy/systemd/config.yaml, its group and a sync task pointed at servers started here,
    run by the unit's ExecStart with what systemd gives the service: the credentials in
    $CREDENTIALS_DIRECTORY (the admin token too), the writable $STATE_DIRECTORY (0700),
    UMask=0077, NoNewPrivileges=yes, MemoryDenyWriteExecute=yes, in a read-only system as an
    unprivileged user under the unit's system call filter (_sandbox). The secrets are read
    from the credentials, the task process starts and syncs, the stopped task is recorded
    in the state directory, ExecReload reloads, SIGTERM (KillMode=mixed) stops it all.
    Without the config's sync.state_dir (`default`: next to the config) the stop cannot be
    recorded: the read-only system is real, and the config example needs its state_dir."""
    program = tmp_path / "seccomp.bpf"
    unit_seccomp_program(program)
    why = "this kernel has no PR_SET_MDWE (Linux 6.3+)" if not _mdwe_supported() else None
    why = why or _sandbox_works(tmp_path, program)
    if why is not None:
        if in_ci():
            pytest.fail(f"cannot run the daemon as the unit would: {why}")
        pytest.skip(f"cannot run the daemon as the unit would: {why}")
    master, target = unit_world["master"], unit_world["target"]
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "redis-password").write_text(PASSWORD + "\n")
    (creds / "admin-token").write_text(ADMIN_TOKEN + "\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    etc = tmp_path / "etc"
    etc.mkdir()
    data = yaml.safe_load(SYSTEMD_CONFIG.read_text())
    assert data["sync"]["state_dir"] == "${STATE_DIRECTORY:-/var/lib/replwatch}"
    (group,) = data["groups"]
    auth = group["auth"]
    assert auth["password_file"] == "${CREDENTIALS_DIRECTORY}/redis-password"
    data["exporter"]["listen"] = "127.0.0.1:0"
    data["poll"] = {"interval": "200ms", "timeout": "150ms"}
    data["heartbeat"] = {"interval": "100ms"}
    data["groups"] = [{**group, "master": master.url, "replicas": []}]
    data["admin"] = {"token_file": "${CREDENTIALS_DIRECTORY}/admin-token"}
    data["sync"]["tasks"] = [
        {"name": "t", "source": master.url, "source_auth": auth, "target": target.url}
    ]
    if state_dir == "default":  # next to the config: read-only
        del data["sync"]["state_dir"]
    config = etc / "config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    (exec_start,) = unit_values("ExecStart")
    argv = shlex.split(exec_start)
    argv = [sys.executable, "-m", "replwatch", *argv[1:]]
    argv[argv.index("/etc/replwatch/config.yaml")] = str(config)
    env = {
        **os.environ,
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": str(state),
        "PYTHONPATH": _this_checkout(),
    }
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log, program.open("rb") as bpf:
        proc = subprocess.Popen(
            _sandbox(argv, read_only=[etc, creds], writable=[state], seccomp_fd=bpf.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=[bpf.fileno()],
            preexec_fn=_as_the_unit_runs_it,
        )
    main_pid = proc.pid
    try:

        def base() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"listening on (http://[\d.:]+)/metrics", log_path.read_text())
            return found.group(1) if found else None

        url = wait_for(base, 20, "the daemon's 'listening on' line")

        # $MAINPID: replwatch run, under bwrap
        def daemon_pid() -> int | None:
            for pid in _descendants(proc.pid):
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if b"replwatch" in cmdline and b"run" in cmdline:
                        return pid
            return None

        main_pid = wait_for(daemon_pid, 10, "replwatch run's pid")
        status_text = Path(f"/proc/{main_pid}/status").read_text()
        assert re.search(r"^CapEff:\s+0+$", status_text, re.M), status_text
        assert re.search(r"^NoNewPrivs:\s+1$", status_text, re.M), status_text
        assert re.search(r"^Seccomp:\s+2$", status_text, re.M), status_text  # a filter
        wait_for(lambda: fetch(url + "/-/ready")[0] == 200, 30, "/-/ready")
        samples = parse_metrics(fetch(url + "/metrics")[1])
        assert sample_value(samples, "replwatch_node_up", group="cache", node=master.label) == 1

        # the task process (started by the daemon, under the same restrictions) syncs
        with master.client() as client:
            client.set("deployed-by", "systemd")

        def synced() -> bool:
            with target.client() as client:
                return client.get("deployed-by") == b"systemd"

        wait_for(synced, 30, "the sync task to copy a key")
        # the admin API with the token from the credentials; the stop is kept in the state dir
        status, body = fetch(url + "/api/v1/tasks/t/stop", "POST", ADMIN_TOKEN, timeout=30)
        tasks_json = state / "tasks.json"
        if state_dir == "configured":
            assert status == 200, body
            assert tasks_json.exists(), sorted(p.name for p in state.iterdir())
            assert stat.S_IMODE(tasks_json.stat().st_mode) == 0o600
        else:  # the sandbox is real: without sync.state_dir the stop cannot be recorded
            assert status == 500 and "replwatch-state/tasks.json: cannot write: Read-only" in body
            assert not tasks_json.exists()
        assert sorted(p.name for p in etc.iterdir()) == ["config.yaml"]

        # ExecReload: the config read again (a group added)
        before = sample_value(samples, "replwatch_config_last_reload_success_timestamp_seconds")
        data["groups"].append({**data["groups"][0], "name": "cache-again"})
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        (exec_reload,) = unit_values("ExecReload")
        reload_argv = [a.replace("$MAINPID", str(main_pid)) for a in shlex.split(exec_reload)]
        assert run(*reload_argv).returncode == 0

        def reloaded() -> bool:
            now = parse_metrics(fetch(url + "/metrics")[1])
            return (
                sample_value(now, "replwatch_config_last_reload_successful") == 1
                and sample_value(now, "replwatch_config_last_reload_success_timestamp_seconds")
                != before
                and sample_value(now, "replwatch_node_up", group="cache-again") == 1
            )

        wait_for(reloaded, 30, "the reload to add group cache-again")
    finally:
        # systemctl stop with KillMode=mixed: SIGTERM to the main process only (bwrap exits
        # with its exit code)
        if proc.poll() is None:
            os.kill(main_pid, signal.SIGTERM)
        try:
            code = proc.wait(30)  # TimeoutStopSec=30s
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log_path.read_text()
    log_text = log_path.read_text()
    assert PASSWORD not in log_text and ADMIN_TOKEN not in log_text
    assert "Traceback" not in log_text


# ----------------------------------------------------------------------------- the pods


POD_UID = 65532  # the pods' runAsUser


def _pod_sandbox(
    argv: list[str], workload: dict[str, Any], volumes: dict[str, Path], bin_dir: Path
) -> list[str]:
    """`argv` in what bubblewrap can build of the workload's container: a read-only root
    (readOnlyRootFilesystem) made of this machine's /usr and Python, the volumes mounted
    where the container mounts them (read-only where it says so; `volumes`: volume name →
    directory standing in for it), runAsUser without capabilities, `bin_dir` on PATH."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail("bwrap not installed (Debian package bubblewrap; scripts/test installs it)")
    args = [bwrap, "--ro-bind", "/usr", "/usr", "--dev", "/dev", "--proc", "/proc"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    c = container(workload)
    for mount in c["volumeMounts"]:
        kind = "--ro-bind" if mount.get("readOnly") else "--bind"
        args += [kind, str(volumes[mount["name"]]), mount["mountPath"]]
    # (after the volumes: this checkout may lie under /tmp, which a volume covers)
    for path in sorted({Path(sys.base_prefix), Path(sys.prefix), ROOT, bin_dir}):
        if not str(path).startswith("/usr/"):
            args += ["--ro-bind", str(path), str(path)]
    uid = str(POD_UID)
    args += ["--unshare-user", "--uid", uid, "--gid", uid, "--cap-drop", "ALL"]
    args += ["--remount-ro", "/", "--die-with-parent", "--chdir", "/", "--clearenv"]
    return [*args, "--", *argv]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workload_name", ["Deployment/replwatch", "StatefulSet/replwatch-shard"])
def test_the_pods_container_runs(
    debian_servers: ServerSet, tmp_path: Path, workload_name: str
) -> None:
    """The container's command, as the pod runs it: the ConfigMap's config.yaml at
    /etc/replwatch, the Secret's files at /run/secrets/replwatch (the config's
    password_file, unchanged), the state emptyDir, /tmp, on a read-only root as user 65532
    without capabilities; only its Redis URLs (example hosts) and its port (a free one, so
    as not to collide here) are changed. The probes' and the Service's paths answer."""
    kind, name = workload_name.split("/")
    workload = manifest(kind, name)
    secret = manifest("Secret", "replwatch-secrets")["stringData"]
    password = secret["redis-password"]
    master = debian_servers.start("master", extra=["--requirepass", "not-" + password])
    with master.client() as client:
        client.execute_command(
            "ACL", "SETUSER", "replwatch-monitor", "on", f">{password}", "~*", "&*", "+@all"
        )
    port = free_port()
    data = configmap_config()
    data["exporter"]["listen"] = f"0.0.0.0:{port}"
    data["groups"] = [{**g, "master": master.url, "replicas": []} for g in data["groups"]]
    volumes = {v: tmp_path / v for v in ("config", "secrets", "state", "tmp")}
    for path in volumes.values():
        path.mkdir()
    (volumes["config"] / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for key, value in secret.items():
        (volumes["secrets"] / key).write_text(value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "replwatch").write_text(f'#!/bin/sh\nexec {sys.executable} -m replwatch "$@"\n')
    (bin_dir / "replwatch").chmod(0o755)
    c = container(workload)
    argv = [*c["command"], *c.get("args", [])]
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    count = int(env.get("SHARDS", "1"))
    shard = owner(data["groups"][0]["name"], count)  # the pod whose shard owns the group
    env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": f"{name}-{shard - 1}"}
    env["PYTHONPATH"] = _this_checkout()
    setenv = [arg for k, v in env.items() for arg in ("--setenv", k, v)]
    sandbox = _pod_sandbox(argv, workload, volumes, bin_dir)
    sandbox[sandbox.index("--") : sandbox.index("--")] = setenv
    log_path = tmp_path / "pod.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(sandbox, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"

        def answers(path: str) -> bool:
            assert proc.poll() is None, log_path.read_text()
            return fetch(base + path, timeout=2)[0] == 200

        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = c[probe]["httpGet"]["path"]
            wait_for(lambda path=path: answers(path), 30, f"{probe} {path}")
        for path in ("/", "/status.json", "/metrics"):
            assert answers(path), path
        samples = parse_metrics(fetch(base + "/metrics")[1])
        info = sample_value(samples, "replwatch_shard_info", index=str(shard), count=str(count))
        assert info == 1
        # the shard's group is polled, logged in with the Secret's password
        group = data["groups"][0]["name"]
        assert sample_value(samples, "replwatch_node_up", group=group, node=master.label) == 1
        # replwatch itself is the sandbox's process (the StatefulSet's sh exec'd it): the
        # SIGTERM of a pod's stop reaches it, and it exits 0
        (pid,) = child_pids(proc.pid)
        assert b"replwatch" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()  # bwrap; --die-with-parent ends what it runs
            proc.wait(30)
    assert "Traceback" not in log_path.read_text()
    assert password not in log_path.read_text()


# ----------------------------------------------------------------------------- Prometheus


PROM_CONFIGS = sorted(PROM_EXAMPLES.glob("*.yml"))


def _referenced_files(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("password_file", "ca_file", "cert_file", "key_file") and isinstance(
                value, str
            ):
                yield value
            else:
                yield from _referenced_files(value)
    elif isinstance(node, list):
        for value in node:
            yield from _referenced_files(value)


def test_scrape_examples_exist() -> None:
    assert {p.name for p in PROM_CONFIGS} == {"static.yml", "file-sd.yml", "protected.yml"}


@pytest.mark.parametrize("path", PROM_CONFIGS, ids=lambda p: p.name)
def test_scrape_example_passes_promtool(tmp_path: Path, path: Path) -> None:
    """promtool check config, in a copy of deploy/prometheus with what the example expects
    next to it: the rules file (checked too) and stand-ins for secret and CA files."""
    here = tmp_path / "prometheus"
    shutil.copytree(PROM_EXAMPLES, here)
    data = yaml.safe_load(path.read_text())
    for pattern in data.get("rule_files", []):
        assert not Path(pattern).is_absolute(), pattern
        (here / pattern).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RULES, here / pattern)
    for name in _referenced_files(data):
        assert not Path(name).is_absolute(), name
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_text("stand-in\n")
    result = run(promtool(), "check", "config", str(here / path.name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    if data.get("rule_files"):
        assert "SUCCESS: 1 rule files found" in result.stdout
    job = replwatchdown_job_regex()
    for scrape in data["scrape_configs"]:
        assert job.fullmatch(scrape["job_name"]), scrape["job_name"]


def test_file_sd_targets_are_checked_by_promtool(tmp_path: Path) -> None:
    here = tmp_path / "prometheus"
    shutil.copytree(PROM_EXAMPLES, here)
    (here / "targets" / "replwatch.yml").write_text(
        '- targets: ["a:9750"]\n  labels: {bad-label: x}\n'
    )
    result = run(promtool(), "check", "config", str(here / "file-sd.yml"))
    assert result.returncode != 0 and "bad-label" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- the doc


def test_the_doc_embeds_exactly_the_files_it_shows() -> None:
    doc = DOC.read_text()
    embedded = re.findall(r"<!-- (deploy/[\w./-]+) -->\n```\w*\n(.*?)```\n", doc, re.S)
    shown = {name for name, _ in embedded}
    assert {
        "deploy/systemd/replwatch.service",
        "deploy/systemd/config.yaml",
        *(str(p.relative_to(ROOT)) for p in PROM_CONFIGS),
        "deploy/prometheus/targets/replwatch.yml",
    } <= shown
    for name, text in embedded:
        assert text == (ROOT / name).read_text(), f"{name} differs from the doc"


def test_the_doc_names_only_files_that_exist() -> None:
    doc = DOC.read_text()
    # file names (with an extension: `kubectl exec deploy/replwatch` names no file) of the
    # directories this page is about; its links to the other pages of docs/ are theirs
    names = set(re.findall(r"\b((?:deploy|alerts|scripts|tests)/[\w./-]*\.\w+)", doc))
    assert names
    missing = sorted(n for n in names if not (ROOT / n).exists())
    assert missing == []


def test_the_docs_excerpts_are_in_the_files() -> None:
    """The shorter snippets the doc quotes from the files are lines of those files."""
    doc = DOC.read_text()
    command = container(manifest("StatefulSet", "replwatch-shard"))["command"][2]
    blocks = re.findall(r"```(\w*)\n(.*?)```\n", doc, re.S)
    shard_block = [text for lang, text in blocks if lang == "sh" and "ordinal=" in text]
    assert len(shard_block) == 1
    command_lines = {line.strip() for line in command.splitlines()}
    for line in shard_block[0].splitlines():
        assert line == "…" or line.strip() in command_lines, line
    unit_lines = set(UNIT.read_text().splitlines())
    config_lines = set(SYSTEMD_CONFIG.read_text().splitlines())
    checked = 0
    for lang, text in blocks:
        if lang == "ini" and "LoadCredential" in text and len(text.splitlines()) == 1:
            assert text.strip() in unit_lines
            checked += 1
        if lang == "yaml" and text.startswith("auth:\n"):
            assert all("    " + line in config_lines for line in text.splitlines())
            checked += 1
    assert checked == 2
