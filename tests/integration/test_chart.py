"""The Helm chart: lint, render with default and non-default values, check what a security review
would check, and have the real API server accept every rendered object (server-side dry run)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
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
    "cluster-wide": ["--set=clusterWide=true"],
    # Every value added for platform teams, overridden at once.
    "overrides": [
        "--set=fullnameOverride=ml-operator",
        "--set=nameOverride=ml",
        "--set=extraArgs={--verbose}",
        '--set-json=extraEnv=[{"name":"MODELLOOP_WORKERS","value":"16"},{"name":"MODELLOOP_POLICY_RESYNC",'
        '"valueFrom":{"configMapKeyRef":{"name":"modelloop-tuning","key":"resync","optional":true}}}]',
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=servingMetrics.podMonitor.enabled=true",
        "--set=servingMetrics.podMonitor.namespaces={serving-a}",
        "--set=alerts.enabled=true",
        "--set=alerts.recordingRules=false",
        "--set=alerts.additionalRuleLabels.team=ml-platform",
        '--set-json=alerts.rules={"ModelloopOperatorDown":{"disabled":true},"ModelloopLiveAccuracyLow":'
        '{"threshold":0.9,"severity":"warning","for":"1h","labels":{"channel":"ml-oncall"}},'
        '"ModelloopServingLatencyHigh":{"threshold":0.25},"ModelloopFeedbackBacklog":{"threshold":5000}}',
    ],
}
PROMTOOL_OVERRIDES = ROOT / "tests/promtool/overrides"

# Just enough of the Prometheus Operator's CRDs for the API server to accept (and so validate the
# envelope of) ServiceMonitor, PodMonitor and PrometheusRule objects; their spec is not checked.
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
    for kind, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
    )
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
        ("--set=fullnameOverride=Not_A_Name", "/fullnameOverride"),
        ("--set=extraEnv[0].name=POD_NAME", "/extraEnv/0/name"),
        ("--set=extraArgs[0]=", "/extraArgs/0"),
        (
            "--set=alerts.rules.ModelloopNoSuchAlert.disabled=true",
            "additional properties 'ModelloopNoSuchAlert' not allowed",
        ),
        ("--set=alerts.rules.ModelloopNoLeader.severity=page", "/alerts/rules/ModelloopNoLeader/severity"),
        ("--set=alerts.rules.ModelloopNoLeader.for=soon", "/alerts/rules/ModelloopNoLeader/for"),
        ("--set=servingMetrics.podMonitor.path=metrics", "/servingMetrics/podMonitor/path"),
    ):
        result = subprocess.run(
            [str(tools_bin / "helm"), "template", "x", str(CHART), "--kube-version", KUBE_VERSION, bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0, bad
        assert expected in result.stderr, result.stderr


def test_defaults_watch_the_release_namespace_with_two_replicas_and_leader_election(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["modelloop-operator"]
    assert container["image"].startswith("ghcr.io/modelloop/operator:")
    assert container["args"] == ["--namespace=modelloop", "--lease-name=modelloop"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Role")}
    assert roles == {("modelloop", "modelloop"), ("modelloop", "modelloop-leader-election")}
    assert {d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")} == {"modelloop-edit", "modelloop-view"}
    assert not by_kind(docs, "ClusterRoleBinding"), "namespaced by default: no cluster-wide access"
    for binding in by_kind(docs, "RoleBinding"):
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


def test_cluster_wide_is_an_explicit_choice(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop", "--set=clusterWide=true")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--all-namespaces"
    assert [d["metadata"]["name"] for d in by_kind(docs, "ClusterRoleBinding")] == ["modelloop"]
    argv = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set=clusterWide=true"]
    both = subprocess.run(
        [str(tools_bin / "helm"), *argv, "--set=watchNamespaces={a}"], capture_output=True, text=True, timeout=120
    )
    assert both.returncode != 0 and "clusterWide=true watches every namespace" in both.stderr


def test_rbac_is_least_privilege(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop", "--set=clusterWide=true")
    (role,) = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "modelloop"]
    granted = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert all("*" not in verbs for verbs in granted.values()) and ("*", "*") not in granted
    assert granted[("", "secrets")] == {"get"}
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("apps", "deployments")] == {"get", "list", "watch"}
    assert "update" not in granted[("batch", "jobs")]
    assert granted[("", "configmaps")] == {"get"}  # spec.storage.tls.caBundle
    assert ("", "pods/exec") not in granted


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
    recording = yaml.safe_load((CHART / "files/recording-rules.yaml").read_text())["groups"]
    # Without overrides the rules are the tested file's, rule for rule (only the runbook prefix differs).
    shipped = json.loads(
        json.dumps(source["groups"]).replace(
            "https://github.com/modelloop/modelloop/blob/main/docs/runbooks.md",
            "https://wiki.example.com/modelloop/runbooks",
        )
    )
    assert rendered == shipped + recording
    for g in rendered[: len(shipped)]:
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
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("-leader-election")]
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
    names = [d["metadata"]["name"] for d in [*by_kind(docs, "Role"), *by_kind(docs, "RoleBinding")]]
    assert names == ["modelloop", "modelloop"], "the watch Role and its binding, no leader-election Lease Role"
    argv = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set=leaderElection.enabled=false"]
    result = subprocess.run([str(tools_bin / "helm"), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "leaderElection.enabled=false runs every replica as if it were alone: with replicaCount=2" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_api_server_accepts_the_rendered_chart(
    control_plane: ControlPlane, monitoring_crds: None, namespace: str, tools_bin: Path, values: list[str]
) -> None:
    namespaced = [] if "--set=clusterWide=true" in values else [f"--set=watchNamespaces={{{namespace}}}"]
    docs = [*render(tools_bin, namespace, *values, *namespaced), *render(tools_bin, namespace, *values)]
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
        ("get", "configmaps"),
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
        ("list", "configmaps"),
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


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_names_its_component(tools_bin: Path, values: list[str]) -> None:
    docs = [d for d in render(tools_bin, "modelloop", *values) if d["kind"] != "CustomResourceDefinition"]
    unlabelled = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if not component(d)]
    assert not unlabelled, f"no app.kubernetes.io/component label: {unlabelled}"
    components = {(d["kind"], component(d)) for d in docs}
    assert ("Deployment", "operator") in components and ("Service", "operator") in components
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    # The selector is immutable: the component label must not have been added to it.
    assert "app.kubernetes.io/component" not in deploy["spec"]["selector"]["matchLabels"]
    for crd in by_kind(render(tools_bin, "modelloop", *values), "CustomResourceDefinition"):
        assert component(crd) == "crd", crd["metadata"]["name"]


def component(doc: dict[str, Any]) -> str | None:
    labels: dict[str, str] = doc["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/component")


def test_name_overrides_rename_every_object_and_keep_the_selectors_matching(tools_bin: Path) -> None:
    default = render(tools_bin, "modelloop")
    docs = render(tools_bin, "modelloop", *VALUE_SETS["overrides"])
    assert len(docs) > len(default)  # the monitoring objects come on top
    named = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    assert all(d["metadata"]["name"].startswith("ml-operator") for d in named), [d["metadata"]["name"] for d in named]
    for d in named:
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "ml", d["metadata"]["name"]
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == "ml-operator"
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The Service is no longer called *modelloop-operator*, which the operator alerts match on job.
    (endpoint,) = monitor["spec"]["endpoints"]
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "job" and "modelloop-operator" in relabel["replacement"]
    (default_monitor,) = by_kind(render(tools_bin, "modelloop", *VALUE_SETS["everything-on"]), "ServiceMonitor")
    assert "relabelings" not in default_monitor["spec"]["endpoints"][0]
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["name"] == "ml-operator"
        assert binding["roleRef"]["name"].startswith("ml-operator")


def test_extra_env_and_args_reach_the_operator(tools_bin: Path) -> None:
    (deploy,) = by_kind(render(tools_bin, "modelloop", *VALUE_SETS["overrides"]), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--namespace=modelloop", "--lease-name=modelloop", "--verbose"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELLOOP_WORKERS"] == {"name": "MODELLOOP_WORKERS", "value": "16"}
    assert env["MODELLOOP_POLICY_RESYNC"]["valueFrom"]["configMapKeyRef"]["key"] == "resync"
    assert {"MODELLOOP_METRICS_PORT", "POD_NAME", "POD_NAMESPACE"} <= env.keys()
    # The names the values comments and docs/install.md promise are the ones the operator reads.
    operator_source = "".join(p.read_text() for p in (ROOT / "operator/modelloop/handlers").glob("*.py"))
    documented = set(re.findall(r"MODELLOOP_[A-Z_]+", (CHART / "values.yaml").read_text()))
    assert {"MODELLOOP_WORKERS", "MODELLOOP_POLICY_RESYNC"} <= documented
    for name in documented - {"MODELLOOP_METRICS_PORT", "MODELLOOP_LIVENESS"}:
        assert f'"{name}"' in operator_source, f"values.yaml documents {name}, which the operator does not read"


def test_pod_monitor_selects_the_example_serving_pods(tools_bin: Path) -> None:
    (monitor,) = by_kind(render(tools_bin, "modelloop", *VALUE_SETS["overrides"]), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["serving-a"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    example = [d for d in yaml.safe_load_all((ROOT / "examples/serving-deployment.yaml").read_text()) if d]
    (serving,) = [d for d in example if d["kind"] == "Deployment"]
    pod = serving["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports, f"the example's containers have no port named {endpoint['port']}"
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    namespaced = render(tools_bin, "ops", "--set=servingMetrics.podMonitor.enabled=true", "--set=watchNamespaces={a,b}")
    (monitor,) = by_kind(namespaced, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    (monitor,) = by_kind(render(tools_bin, "ops", "--set=servingMetrics.podMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}, "the watched namespace by default"
    everywhere = render(tools_bin, "ops", "--set=servingMetrics.podMonitor.enabled=true", "--set=clusterWide=true")
    (monitor,) = by_kind(everywhere, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def rendered_alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (rule,) = by_kind(docs, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def source_alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((CHART / "files/alerts.yaml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def test_alert_overrides(tools_bin: Path) -> None:
    source = source_alerts()
    alerts = rendered_alerts(render(tools_bin, "modelloop", *VALUE_SETS["overrides"]))
    assert "ModelloopOperatorDown" not in alerts
    assert alerts.keys() == source.keys() - {"ModelloopOperatorDown"}
    for name, rule in alerts.items():
        assert rule["labels"]["team"] == "ml-platform", name
    low = alerts["ModelloopLiveAccuracyLow"]
    assert low["labels"] == {"severity": "warning", "team": "ml-platform", "channel": "ml-oncall"}
    assert low["for"] == "1h"
    assert low["expr"] == source["ModelloopLiveAccuracyLow"]["expr"].replace("< 0.85", "< 0.9")
    assert "less than 90% of the time" in low["annotations"]["description"]
    latency = alerts["ModelloopServingLatencyHigh"]
    assert latency["expr"].strip().endswith("> 0.25") and latency["for"] == "10m"
    assert "above 250ms" in latency["annotations"]["description"]
    backlog = alerts["ModelloopFeedbackBacklog"]
    assert "> 5000" in backlog["expr"] and "more than 5000 feedback records" in backlog["annotations"]["description"]
    untouched = alerts["ModelloopNoLeader"]
    assert untouched["expr"] == source["ModelloopNoLeader"]["expr"] and untouched["for"] == "5m"
    rule = by_kind(render(tools_bin, "modelloop", *VALUE_SETS["overrides"]), "PrometheusRule")[0]
    assert not [g for g in rule["spec"]["groups"] if g["name"] == "modelloop.recording"]
    defaults = by_kind(render(tools_bin, "modelloop", *VALUE_SETS["everything-on"]), "PrometheusRule")[0]
    (recording,) = [g for g in defaults["spec"]["groups"] if g["name"] == "modelloop.recording"]
    assert all("record" in r for r in recording["rules"])


def test_every_threshold_override_changes_its_alert(tools_bin: Path) -> None:
    """The thresholds the template knows (modelloop.alertThresholds) still match files/alerts.yaml."""
    helpers = (CHART / "templates/_helpers.tpl").read_text()
    block = helpers.split('{{- define "modelloop.alertThresholds" -}}', 1)[1].split("{{- end -}}", 1)[0]
    thresholds: dict[str, dict[str, str]] = yaml.safe_load(block)
    source = source_alerts()
    assert thresholds.keys() <= source.keys()
    overrides = {name: {"threshold": 1234.5} for name in thresholds}
    alerts = rendered_alerts(
        render(tools_bin, "modelloop", "--set=alerts.enabled=true", f"--set-json=alerts.rules={json.dumps(overrides)}")
    )
    for name, t in thresholds.items():
        assert source[name]["expr"].count(t["expr"]) == 1, f"{name}: {t['expr']!r} is not once in its expr"
        op = t["expr"].split()[0]
        assert alerts[name]["expr"] == source[name]["expr"].replace(t["expr"], f"{op} 1234.5"), name
        if "text" in t:
            assert t["text"] in source[name]["annotations"]["description"], name
            assert t["text"] not in alerts[name]["annotations"]["description"], name


def test_threshold_on_an_alert_without_one_is_refused(tools_bin: Path) -> None:
    argv = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set=alerts.enabled=true"]
    result = subprocess.run(
        [str(tools_bin / "helm"), *argv, "--set=alerts.rules.ModelloopNoLeader.threshold=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "alerts.rules.ModelloopNoLeader.threshold: ModelloopNoLeader has no threshold to override" in result.stderr


def test_schema_lists_every_alert(tools_bin: Path) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["alerts"]["properties"]["rules"]["properties"]
    assert sorted(names) == sorted(source_alerts())


def test_promtool_proves_the_alert_overrides(tools_bin: Path, tmp_path: Path) -> None:
    """tests/promtool/overrides: the rule file the chart renders with those values, run through promtool."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (Debian package prometheus)"
    docs = render(tools_bin, "modelloop", "-f", str(PROMTOOL_OVERRIDES / "values.yaml"))
    (rule,) = by_kind(docs, "PrometheusRule")
    (tmp_path / "rendered-rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(PROMTOOL_OVERRIDES / "overrides_test.yaml", tmp_path)
    for argv in (["check", "rules", "rendered-rules.yaml"], ["test", "rules", "overrides_test.yaml"]):
        result = subprocess.run([promtool, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_object_is_a_helm_hook(tools_bin: Path, values: list[str]) -> None:
    """Hooks are left behind by `helm uninstall` and re-created by Argo CD on every sync (issue 18)."""
    hooks = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in render(tools_bin, "modelloop", *values)
        if any(k.startswith("helm.sh/hook") for k in (d["metadata"].get("annotations") or {}))
    ]
    assert not hooks
    assert not list((CHART / "templates").glob("*hook*")) and "helm.sh/hook" not in "".join(
        p.read_text() for p in (CHART / "templates").iterdir()
    )


def test_signing_key_is_mounted_read_only_into_the_operator_from_its_own_namespace(tools_bin: Path) -> None:
    docs = render(tools_bin, "modelloop", "--set", "signing.keySecret=modelloop-signing")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELLOOP_SIGNING_KEY"] == "/etc/modelloop/signing/signing.key"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    assert mount == {"name": "signing-key", "mountPath": "/etc/modelloop/signing", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-key")
    assert volume["secret"]["secretName"] == "modelloop-signing"
    assert volume["secret"]["items"] == [{"key": "signing.key", "path": "signing.key"}]
    unsigned = by_kind(render(tools_bin, "modelloop"), "Deployment")[0]["spec"]["template"]["spec"]
    assert "signing-key" not in {v["name"] for v in unsigned["volumes"]}
