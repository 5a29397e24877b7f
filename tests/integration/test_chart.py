"""The Helm chart: lint, render with default and non-default values, check what a security review
would check, and have the real API server accept every rendered object (server-side dry run)."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelloop.api.constants import GROUP, RETRAINPOLICY_PLURAL, VERSION
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/modelloop"
# helm template renders offline; tell it the Kubernetes version the tests run (hack/versions.env).
KUBE_VERSION = next(
    line.split("=", 1)[1].strip()
    for line in (ROOT / "hack/versions.env").read_text().splitlines()
    if line.startswith("KUBERNETES_VERSION=")
)

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "everything-on": [
        "--set=alerts.enabled=true",
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=alerts.runbookBaseURL=https://wiki.example.com/modelloop/runbooks",
        "--set=policyGuard.enabled=true",
        "--set=policyGuard.allowedImagePrefixes={ghcr.io/modelloop/}",
        "--set=policyGuard.allowedServiceAccounts={trainer}",
        "--set=policyGuard.allowedStorageEndpoints={minio.digits.svc:9000}",
    ],
    "single-replica": ["--set=replicaCount=1", "--set=dashboard.enabled=false", "--set=aggregateToDefaultRoles=false"],
    "standalone": ["--set=replicaCount=1", "--set=leaderElection.enabled=false"],
}

# Just enough of the Prometheus Operator's CRDs for the API server to accept (and so validate the
# envelope of) ServiceMonitor and PrometheusRule objects; their spec is not checked.
MONITORING_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules"))
]


def helm(tools_bin: Path, *args: str) -> str:
    result = subprocess.run([str(tools_bin / "helm"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@functools.cache  # helm is slow to start on a loaded machine; the tests only read the result
def render(tools_bin: Path, namespace: str, *values: str) -> list[dict[str, Any]]:
    out = helm(
        tools_bin,
        "template",
        "modelloop",
        str(CHART),
        "--namespace",
        namespace,
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
        *values,
    )
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def monitoring_crds(control_plane: ControlPlane) -> Iterator[None]:
    docs = json.dumps({"apiVersion": "v1", "kind": "List", "items": MONITORING_CRDS})
    control_plane.kubectl("apply", "-f", "-", input=docs)
    names = [f"crd/{c['metadata']['name']}" for c in MONITORING_CRDS]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    yield


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint(tools_bin: Path, values: list[str]) -> None:
    out = helm(tools_bin, "lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out


def test_schema_rejects_unknown_and_invalid_values(tools_bin: Path) -> None:
    for bad, expected in (
        ("--set=replicas=2", "additional properties 'replicas' not allowed"),
        ("--set=replicaCount=0", "/replicaCount"),
        ("--set=watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("--set=metrics.port=8081", "/metrics/port"),
        ("--set=peering.name=modelloop", "additional properties 'peering' not allowed"),
        ("--set=leaderElection.leaseName=Not_A_Name", "/leaderElection/leaseName"),
    ):
        result = subprocess.run(
            [str(tools_bin / "helm"), "template", "x", str(CHART), "--kube-version", KUBE_VERSION, bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0, bad
        assert expected in result.stderr, result.stderr


def test_defaults_watch_the_cluster_with_two_replicas_and_leader_election(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["modelloop-operator"]
    assert container["image"].startswith("ghcr.io/modelloop/operator:")
    assert "--all-namespaces" in container["args"] and "--standalone" not in container["args"]
    assert "--lease-name=modelloop" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (role,) = by_kind(docs, "Role")
    assert (role["metadata"]["name"], role["metadata"]["namespace"]) == ("modelloop-leader-election", "modelloop")
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelloop", "namespace": "modelloop"}]
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert crds == {"retrainpolicies.modelloop.dev", "modelversions.modelloop.dev"}, crds
    assert not [d for d in docs if "kopf.dev" in d["apiVersion"] or "kopf.dev" in json.dumps(d.get("rules", []))]
    (dashboard,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert json.loads(dashboard["data"]["modelloop.json"])["uid"] == "modelloop"
    assert not by_kind(docs, "PrometheusRule") and not by_kind(docs, "ServiceMonitor")
    assert len(by_kind(docs, "PodDisruptionBudget")) == 1


def test_namespaced_watch_has_no_cluster_wide_operator_access(tools_bin: Path) -> None:
    docs = render(tools_bin, "ops", "--set=watchNamespaces={team-a,team-b}", "--set=aggregateToDefaultRoles=false")
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--namespace=team-a", "--namespace=team-b", "--lease-name=modelloop"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Role")}
    assert roles == {("team-a", "modelloop"), ("team-b", "modelloop"), ("ops", "modelloop-leader-election")}
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelloop", "namespace": "ops"}]


def test_rbac_is_least_privilege(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop")
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "modelloop"]
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert all("*" not in verbs for verbs in granted.values()) and ("*", "*") not in granted
    assert granted[("", "secrets")] == {"get"}
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("apps", "deployments")] == {"get", "list", "watch"}
    assert "update" not in granted[("batch", "jobs")]
    assert ("", "configmaps") not in granted and ("", "pods/exec") not in granted


def test_aggregated_user_roles(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop")
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in by_kind(docs, "ClusterRole")}
    assert labels["modelloop-edit"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["modelloop-view"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_container_is_locked_down(tools_bin: Path, values: list[str]) -> None:
    workloads = [d for d in render(tools_bin, "modelloop", *values) if d["kind"] in {"Deployment", "Job", "DaemonSet"}]
    assert workloads
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = {v["name"]: v for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc.get("runAsNonRoot", True) is True
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in mounts[tmp[0]["name"]], f"{c['name']}: /tmp must be a writable emptyDir"


def test_prometheus_rule_carries_the_tested_alerts(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop", *VALUE_SETS["everything-on"])
    (rule,) = by_kind(docs, "PrometheusRule")
    source = yaml.safe_load((CHART / "files/alerts.yaml").read_text())
    rendered = rule["spec"]["groups"]
    assert [r["alert"] for g in rendered for r in g["rules"]] == [
        r["alert"] for g in source["groups"] for r in g["rules"]
    ]
    for g in rendered:
        for r in g["rules"]:
            assert r["annotations"]["runbook_url"].startswith("https://wiki.example.com/modelloop/runbooks#")
            assert "{{ $labels." in r["annotations"]["summary"] or "{{" not in r["annotations"]["summary"]
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "modelloop-operator" in service["metadata"]["name"]  # the job label ModelloopOperatorDown matches


def test_leader_election_role_is_limited_to_the_one_lease(tools_bin: Path) -> None:
    docs = render(tools_bin, "ops", "--set=leaderElection.leaseName=ml-operator")
    (deploy,) = by_kind(docs, "Deployment")
    assert "--lease-name=ml-operator" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        # create cannot be limited by name: the API server authorizes it before the object exists
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["ml-operator"],
            "verbs": ["get", "update", "patch"],
        },
    ]


def test_standalone_only_with_one_replica(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop", *VALUE_SETS["standalone"])
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and not [a for a in args if a.startswith("--lease-name")]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    argv = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set=leaderElection.enabled=false"]
    result = subprocess.run([str(tools_bin / "helm"), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "leaderElection.enabled=false runs every replica as if it were alone: with replicaCount=2" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_api_server_accepts_the_rendered_chart(
    control_plane: ControlPlane, monitoring_crds: None, namespace: str, tools_bin: Path, values: list[str]
) -> None:
    docs = [
        *render(tools_bin, namespace, *values, f"--set=watchNamespaces={{{namespace}}}"),
        *render(tools_bin, namespace, *values),
    ]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=listing, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout


@pytest.mark.integration
def test_api_server_enforces_least_privilege(control_plane: ControlPlane, namespace: str, tools_bin: Path) -> None:
    docs = render(tools_bin, namespace, f"--set=watchNamespaces={{{namespace}}}", "--set=aggregateToDefaultRoles=false")
    rbac = [d for d in docs if d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    assert len(rbac) == 5  # the ServiceAccount, and a Role + RoleBinding each for the watch and the Lease
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    operator = f"system:serviceaccount:{namespace}:modelloop"

    def can(verb: str, resource: str) -> bool:
        result = control_plane.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", operator, check=False)
        return result.stdout.strip() == "yes"

    for verb, resource in (
        ("watch", "retrainpolicies.modelloop.dev"),
        ("patch", "retrainpolicies.modelloop.dev/status"),
        ("create", "modelversions.modelloop.dev"),
        ("create", "jobs.batch"),
        ("delete", "services"),
        ("list", "pods"),
        ("watch", "deployments.apps"),
        ("get", "secrets"),
        ("create", "events"),
        ("create", "leases.coordination.k8s.io"),
        ("get", "leases.coordination.k8s.io/modelloop"),
        ("update", "leases.coordination.k8s.io/modelloop"),
    ):
        assert can(verb, resource), f"the operator cannot {verb} {resource}"
    for verb, resource in (
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "pods"),
        ("patch", "deployments.apps"),
        ("create", "pods/exec"),
        ("get", "configmaps"),
        ("delete", "events"),
        ("update", "leases.coordination.k8s.io/someone-elses"),
        ("get", "leases.coordination.k8s.io/someone-elses"),
        ("list", "leases.coordination.k8s.io"),
        ("delete", "leases.coordination.k8s.io/modelloop"),
    ):
        assert not can(verb, resource), f"the operator should not {verb} {resource}"
    other = control_plane.kubectl("auth", "can-i", "list", "pods", "-n", "default", "--as", operator, check=False)
    assert other.stdout.strip() == "no", "a namespaced install must not reach other namespaces"


@pytest.mark.integration
def test_policy_guard_refuses_what_the_allowlists_do_not_name(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tools_bin: Path
) -> None:
    """The optional ValidatingAdmissionPolicy, as the API server enforces it, in one namespace only."""
    control_plane.kubectl("label", "namespace", namespace, f"guard-test={namespace}")
    docs = render(
        tools_bin,
        namespace,
        "--set=policyGuard.enabled=true",
        "--set=policyGuard.allowedImagePrefixes={registry.example.com/ml/,ghcr.io/modelloop/}",
        "--set=policyGuard.allowedServiceAccounts={trainer}",
        "--set=policyGuard.allowedStorageEndpoints={minio.ml.svc:9000}",
        f"--set=policyGuard.namespaceSelector.matchLabels.guard-test={namespace}",
    )
    guard = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert [d["kind"] for d in guard] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": guard})
    control_plane.kubectl("apply", "-f", "-", input=listing)
    custom = client.CustomObjectsApi(api)

    def create(name: str, **changes: Any) -> str:
        """'' when the API server would accept the policy (a dry run: nothing is stored), else its message."""
        spec = copy.deepcopy(GUARDED_SPEC)
        for path, value in changes.items():
            node = spec
            *parents, leaf = path.split("__")
            for key in parents:
                node = node[key]
            node[leaf] = value
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RetrainPolicy", "metadata": {"name": name}, "spec": spec}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, RETRAINPOLICY_PLURAL, body, dry_run="All")
        except ApiException as e:
            return str(json.loads(e.body).get("message", e.body))
        return ""

    try:
        # The policy takes effect once the API server has compiled it: wait for the first refusal.
        first = wait_until(lambda: create("probe", training__image="docker.io/evil/miner:1") or None, 30)
        assert "spec.training.image docker.io/evil/miner:1 is not from an allowed registry" in first, first
        assert "registry.example.com/ml/, ghcr.io/modelloop/" in first
        assert "not allowed" in create("sa", training__serviceAccountName="admin")
        assert "spec.storage.endpoint evil.example.com:443 is not allowed" in create(
            "endpoint", storage__endpoint="evil.example.com:443"
        )
        assert create("ok", training__image="registry.example.com/ml/trainer:2") == ""
        assert create("ok-sa", training__serviceAccountName="trainer") == ""
    finally:
        for d in reversed(guard):
            control_plane.kubectl("delete", d["kind"], d["metadata"]["name"], "--wait=true", check=False)


GUARDED_SPEC: dict[str, Any] = {
    "model": "digits",
    "storage": {"endpoint": "minio.ml.svc:9000", "bucket": "models", "trainerCredentials": {"secretName": "s3"}},
    "dataset": {"path": "datasets/digits"},
    "training": {"image": "ghcr.io/modelloop/trainer:0.1.0"},
    "serving": {"deployment": "digits"},
}


def wait_until(probe: Callable[[], str | None], timeout: float) -> str:
    found: list[str] = []
    wait_for(lambda: bool(found.append(probe() or "") or found[-1]), timeout, "the admission policy to refuse")
    return found[-1]
