"""The Helm chart (contrib/helm/collector, its README): rendered by the real helm, checked against the
Kubernetes schemas, and its collector configuration checked by the real `collector validate`.

helm comes from tools/install_helm.py (run by `make install`); without it these tests fail rather
than skip, since `make test` installs it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "contrib" / "helm" / "collector"
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
COLLECTOR = BIN / "collector"
NAMESPACE = "metering"
K8S_VERSION = "1.33"
Manifest = dict[str, Any]

# Every preset, and full configs that use (or not) the Kubernetes API.
PRESETS: dict[str, dict[str, Any]] = {
    "http-server": {"preset": "http-server", "openmeter": {"token": "om-test-token"}},
    "kubernetes": {"preset": "kubernetes", "replicaCount": 2},
    "kubernetes-namespaced": {"preset": "kubernetes", "kubernetes": {"namespaces": ["team-a", "team-b"]}},
    "runai": {
        "preset": "runai",
        "runai": {"url": "https://myorg.run.ai", "appId": "app", "appSecret": "s3cret"},
        "openmeter": {"existingSecret": "om", "existingSecretKey": "api-token"},
    },
    "config-http": {
        "config": {
            "receivers": {"http": {"endpoint": "0.0.0.0:9000"}},
            "exporters": {"openmeter": {"url": "${OPENMETER_URL}", "token": "${OPENMETER_TOKEN:-}"}},
            "service": {"pipelines": {"events": {"receivers": ["http"], "exporters": ["openmeter"]}}},
        },
        "service": {"receiverPorts": [{"name": "http", "port": 9000}]},
    },
    "config-kubernetes": {
        "config": {
            "receivers": {"kubernetes": {"namespaces": ["jobs"], "nodes": True, "persistent_volume_claims": True}},
            "coordinators": {"kubernetes_lease": {"name": "metering-lease"}},
            "exporters": {"debug": {}},
            "service": {
                "coordinator": "kubernetes_lease",
                "pipelines": {"usage": {"receivers": ["kubernetes"], "exporters": ["debug"]}},
            },
        }
    },
}
OPTIONS_ON = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"enabled": True, "egress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]},
    "grafanaDashboard": {"enabled": True},
    "extraEnv": [{"name": "COLLECTOR_EXTRA", "value": "1"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
}
# Prometheus Operator CRDs: no schema in kubernetes-validate; their structure is checked in _check_crd.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if values is not None:
        vf = tmp / "values.yaml"
        vf.write_text(yaml.safe_dump(values))
        extra = ["-f", str(vf)]
    return subprocess.run([str(HELM), *args, *extra], capture_output=True, text=True, timeout=60, check=False, cwd=tmp)


def render(values: dict[str, Any], tmp: Path) -> list[Manifest]:
    done = helm("template", "rel", str(CHART), "--namespace", NAMESPACE, values=values, tmp=tmp)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


def workload(docs: list[Manifest]) -> Manifest:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1
    return found[0]


def pod_env(docs: list[Manifest], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment the collector container gets: its ConfigMap (envFrom), then env, resolved the
    way the kubelet would (downward API with this pod's name; Secret keys from the rendered Secret
    or, for an existingSecret, from ``secrets``)."""
    container = workload(docs)["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            env[var["name"]] = {"metadata.name": "rel-collector-0", "metadata.namespace": NAMESPACE}[
                ref["fieldRef"]["fieldPath"]
            ]
        else:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            if name in rendered:
                env[var["name"]] = base64.b64decode(rendered[name]["data"][key]).decode()
            else:
                env[var["name"]] = secrets[(name, key)]
    return env


def collector_view(docs: list[Manifest], tmp: Path) -> dict[str, Any]:
    """Run the real `collector validate` with the pod's environment and configuration file, then load
    the same configuration to report what the running collector would use."""
    env = pod_env(docs, {("om", "api-token"): "om-from-existing-secret"})
    spec = workload(docs)["spec"]["template"]["spec"]
    if "COLLECTOR_CONFIG" in env:
        volume = next(v for v in spec["volumes"] if v["name"] == "config")
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "config")
        text = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["config.yaml"]
        assert env["COLLECTOR_CONFIG"] == f"{mount['mountPath']}/config.yaml"
        (tmp / "config.yaml").write_text(text)
        env["COLLECTOR_CONFIG"] = str(tmp / "config.yaml")
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), **env}
    done = subprocess.run(
        [str(COLLECTOR), "validate"], env=full_env, capture_output=True, text=True, timeout=60, cwd=tmp, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "configuration OK" in done.stdout
    probe = (
        "import argparse, json\n"
        "from collector.cli.common import load, registry_from_args\n"
        "a = argparse.Namespace(config=None, preset=None, strict_plugins=False)\n"
        "c = load(a, registry_from_args(a)).raw\n"
        "print(json.dumps({'storage': str(c.storage.directory), 'drain': c.service.drain_timeout,"
        " 'admin': c.service.telemetry.endpoint, 'coordinator': c.service.coordinator,"
        " 'receivers': sorted(c.receivers)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=full_env, capture_output=True, text=True, timeout=60, cwd=tmp, check=False
    )
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return view


def _check_crd(doc: Manifest) -> None:
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["endpoints"] and all(e["port"] == "admin" and e["path"] == "/metrics" for e in spec["endpoints"])
        assert spec["selector"]["matchLabels"]
    else:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        groups = spec["groups"]
        assert groups and all(g["name"] and g["rules"] for g in groups)
        for rule in (r for g in groups for r in g["rules"]):
            assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str), rule


@pytest.fixture(scope="module", autouse=True)
def _helm_installed() -> None:
    assert HELM.is_file(), f"{HELM} missing: run `make install` (tools/install_helm.py)"
    dashboard = CHART / "files" / "grafana-dashboard.json"
    assert dashboard.is_file(), f"{dashboard} missing (the Grafana dashboard the chart ships)"


@pytest.mark.parametrize("options", [False, True], ids=["plain", "all-options"])
@pytest.mark.parametrize("storage", [False, True], ids=["emptydir", "pvc"])
@pytest.mark.parametrize("case", list(PRESETS))
def test_lint_template_and_schemas(case: str, storage: bool, options: bool, tmp_path: Path) -> None:
    values = merge(PRESETS[case], {"storage": {"enabled": storage}}, OPTIONS_ON if options else {})
    lint = helm("lint", str(CHART), "--strict", "--namespace", NAMESPACE, values=values, tmp=tmp_path)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(values, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert ("StatefulSet" in kinds) == storage and ("Deployment" in kinds) != storage
    assert (kinds & CRD_KINDS == CRD_KINDS) == options
    assert ("NetworkPolicy" in kinds) == options
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            _check_crd(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if options:
        dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"])
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["collector.json"])  # the JSON survives templating


@pytest.mark.parametrize("case", list(PRESETS))
def test_rendered_config_validates_and_storage_is_the_volume(case: str, tmp_path: Path) -> None:
    docs = render(merge(PRESETS[case], {"storage": {"enabled": True, "size": "5Gi"}}), tmp_path)
    view = collector_view(docs, tmp_path)
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    # The queue lives on the PersistentVolumeClaim, not beside it.
    assert view["storage"] == data_mount["mountPath"]
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert all(v["name"] != "data" for v in pod["volumes"])
    # SIGKILL only after the drain had its time.
    assert pod["terminationGracePeriodSeconds"] > view["drain"]
    # Probes reach the admin server the collector actually listens on.
    admin_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
    assert view["admin"] == f"0.0.0.0:{admin_port}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    if view["coordinator"]:
        env = pod_env(docs, {("om", "api-token"): "x"})
        assert env["POD_NAME"] and env["POD_NAMESPACE"] == NAMESPACE


def rbac_rules(docs: list[Manifest]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """(kind, namespace) -> rules, for every Role and ClusterRole bound to the collector's account."""
    sa = workload(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if d["kind"][-4:] == "Role"
    }
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        out.setdefault((ref["kind"], ns), []).extend(role["rules"])
    return out


PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
LEASE_CREATE = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}


def lease_rw(name: str) -> dict[str, Any]:
    return {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [name],
        "verbs": ["get", "update"],
    }


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("http-server", {}),
        ("runai", {}),
        ("config-http", {}),
        ("kubernetes", {("ClusterRole", None): [PODS], ("Role", NAMESPACE): [LEASE_CREATE, lease_rw("rel-collector")]}),
        (
            "kubernetes-namespaced",
            {
                ("Role", "team-a"): [PODS],
                ("Role", "team-b"): [PODS],
                ("Role", NAMESPACE): [LEASE_CREATE, lease_rw("rel-collector")],
            },
        ),
        (
            "config-kubernetes",
            {
                ("ClusterRole", None): [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}],
                ("Role", "jobs"): [
                    PODS,
                    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["list", "watch"]},
                ],
                ("Role", NAMESPACE): [LEASE_CREATE, lease_rw("metering-lease")],
            },
        ),
    ],
)
def test_rbac_is_exactly_what_the_preset_reads(case: str, expected: dict[Any, Any], tmp_path: Path) -> None:
    docs = render(PRESETS[case], tmp_path)
    assert rbac_rules(docs) == expected
    pod = workload(docs)["spec"]["template"]["spec"]
    # No API access needed: no token in the pod at all.
    assert pod["automountServiceAccountToken"] is bool(expected)
    if expected and any(k == ("Role", NAMESPACE) for k in expected):
        # The Lease lives where the coordinator looks for it: $POD_NAMESPACE, by name.
        view = collector_view(render(merge(PRESETS[case], {"storage": {"enabled": True}}), tmp_path), tmp_path)
        assert view["coordinator"] == "kubernetes_lease"


def checksum(docs: list[Manifest]) -> str:
    value: str = workload(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_a_changed_config_rolls_the_pods(tmp_path: Path) -> None:
    base = checksum(render(PRESETS["kubernetes"], tmp_path))
    assert checksum(render(PRESETS["kubernetes"], tmp_path)) == base  # stable: no spurious rollouts
    assert checksum(render(merge(PRESETS["kubernetes"], {"kubernetes": {"interval": "5m"}}), tmp_path)) != base
    custom = checksum(render(PRESETS["config-http"], tmp_path))
    changed = merge(PRESETS["config-http"], {"config": {"receivers": {"http": {"endpoint": "0.0.0.0:9001"}}}})
    assert checksum(render(changed, tmp_path)) != custom


def test_security_context_and_pdb(tmp_path: Path) -> None:
    docs = render(merge(PRESETS["http-server"], {"storage": {"enabled": True}}), tmp_path)
    pod = workload(docs)["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["fsGroup"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == workload(docs)["spec"]["selector"]["matchLabels"]
    # The token is in a Secret, never in the ConfigMap or the pod spec.
    assert "om-test-token" not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"preset": "nope"}, 'preset "nope" is not one of'),
        (
            {"preset": "runai", "replicaCount": 2, "runai": {"url": "u", "appId": "a", "appSecret": "s"}},
            "replicaCount must be 1",
        ),
        ({"preset": "runai"}, "runai.url"),
        ({"terminationGracePeriodSeconds": 20, "drainTimeoutSeconds": 30}, "must be above drainTimeoutSeconds"),
        ({"config": {"storage": {"directory": "/elsewhere"}}}, "storage.mountPath"),
    ],
)
def test_misconfigurations_fail_with_a_message(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    done = helm("template", "rel", str(CHART), values=values, tmp=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_emptydir_install_warns_in_notes(tmp_path: Path) -> None:
    done = helm("install", "rel", str(CHART), "--dry-run=client", values={"preset": "http-server"}, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING: storage.enabled is false" in done.stdout
    done = helm("install", "rel", str(CHART), "--dry-run=client", values={"storage": {"enabled": True}}, tmp=tmp_path)
    assert done.returncode == 0 and "WARNING" not in done.stdout.split("NOTES:")[-1], done.stderr


def test_the_service_monitor_scrapes_each_pod_once(tmp_path: Path) -> None:
    """With storage the StatefulSet has a headless Service beside the main one: the ServiceMonitor must
    select only one of them, or every pod is scraped twice (and counted twice on the dashboard)."""
    docs = render(merge(PRESETS["http-server"], {"storage": {"enabled": True}}, OPTIONS_ON), tmp_path)
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]

    def selected(labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expr in selector.get("matchExpressions", []):
            present = expr["key"] in labels
            if (expr["operator"] == "DoesNotExist" and present) or (expr["operator"] == "Exists" and not present):
                return False
        return True

    services = [d for d in docs if d["kind"] == "Service"]
    assert len(services) == 2
    assert [s["metadata"]["name"] for s in services if selected(s["metadata"]["labels"])] == ["rel-collector"]


def test_workers_and_replicas_scale_out_each_with_its_own_volume(tmp_path: Path) -> None:
    """`workers` reaches the collector (and passes `collector validate`); several replicas with storage get
    one volume each (volumeClaimTemplates), which is how the collector scales beyond one node."""
    values = merge(PRESETS["http-server"], {"storage": {"enabled": True}, "replicaCount": 3, "workers": "auto"})
    docs = render(values, tmp_path)
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    assert not any(v.get("persistentVolumeClaim") for v in sts["spec"]["template"]["spec"].get("volumes", []))
    assert pod_env(docs, {})["COLLECTOR_WORKERS"] == "auto"
    collector_view(docs, tmp_path)  # the real `collector validate` accepts it
