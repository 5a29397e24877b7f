"""Operator at scale: 200 RetrainPolicies x 20 ModelVersions in a real API server.

Measured for the modelloop operator and, in the same run and on the same objects, for a bare
kopf operator that watches the same two kinds and does the least a reconcile can do (write
``status.observedGeneration``): resident memory, time to resync after a restart (every policy's
spec is changed while the operator is down; resynced = every policy reports the new
generation), and API requests per idle minute, counted from the kube-apiserver's
``apiserver_request_total`` over an idle window after the resync. The metric has no user-agent
label, so both operators are measured in identical windows on the same control plane and the
rate of an idle window with no operator at all is recorded beside them (the control plane's
own loops).

Counting pending corrections (issue 15): the operator's own counting pass (``_count_feedback``,
what every reconcile runs) over 10,000 pending reviews in a real MinIO, in a fresh process each
time: image corrections as the server writes them (joined to their receipts, the input known by
reference and digest, a reason) against digit reviews carrying their 64 inputs inline, in the same
run, alternating order. Time and peak resident memory must stay flat in the input's size: the
operator never reads an input, only the small records.

``python -m bench.bench_operator_scale --bare-operator`` runs the baseline operator alone;
``--feedback-only`` runs only the counting comparison (no API server needed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import report
from modelloop.api import constants as c

FEEDBACK_RECORDS = 10_000
FEEDBACK_BATCH = 100  # the server's default MODELLOOP_FEEDBACK_BATCH
IMAGE, DIGITS = "laundry", "digits"

NAMESPACE = "scale"
OPERATOR_CMD_ENV = "MODELLOOP_BENCH_OPERATOR_CMD"  # another command line for "ours", e.g. an installed build
SECRET = "scale-s3"
CREATE_WORKERS = 16
KEEP_LOGS_ENV = "MODELLOOP_BENCH_KEEP_LOGS"  # a folder to copy the operators' logs into
_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


# --- the baseline operator ----------------------------------------------------------------------


def bare_operator() -> None:
    """The least an operator of these kinds can do: see every object, acknowledge each spec change."""
    import kopf

    @kopf.on.resume(c.GROUP, c.VERSION, c.RETRAINPOLICY_PLURAL)
    @kopf.on.create(c.GROUP, c.VERSION, c.RETRAINPOLICY_PLURAL)
    @kopf.on.update(c.GROUP, c.VERSION, c.RETRAINPOLICY_PLURAL)
    def policy(meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
        patch.status["observedGeneration"] = meta.get("generation")

    @kopf.on.event(c.GROUP, c.VERSION, c.MODELVERSION_PLURAL)
    def version(**_: Any) -> None:
        return None

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage()

    kopf.run(clusterwide=True, standalone=True)


# --- objects ------------------------------------------------------------------------------------


def policy_body(i: int, endpoint: str, interval: int) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.RETRAINPOLICY_KIND,
        "metadata": {"name": f"model-{i:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": f"model-{i:04d}",
            "storage": {
                "endpoint": endpoint,
                "bucket": "scale-bench",
                "trainerCredentials": {"secretName": SECRET},
                "tls": {"enabled": False},  # the bench's MinIO serves plain HTTP
            },
            "dataset": {"path": "datasets/digits"},
            # Idle means idle: no schedule, and a threshold the (empty) feedback never reaches.
            "triggers": {"feedback": {"minSamples": 10_000_000}, "checkIntervalSeconds": interval},
            "training": {"image": "modelloop/trainer:dev"},
        },
    }


def version_body(policy: str, n: int, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.MODELVERSION_KIND,
        "metadata": {
            "name": f"{policy}-v{n}",
            "namespace": NAMESPACE,
            "labels": {c.LABEL_POLICY: policy, c.LABEL_MODEL: policy, c.LABEL_VERSION: f"v{n}"},
            "ownerReferences": [
                {
                    "apiVersion": c.API_VERSION,
                    "kind": c.RETRAINPOLICY_KIND,
                    "name": policy,
                    "uid": uid,
                    "controller": True,
                }
            ],
        },
        "spec": {"model": policy, "version": f"v{n}", "policy": policy, "trigger": "bench"},
    }


def version_status(n: int, versions: int) -> dict[str, Any]:
    phase = "Active" if n == versions else "Superseded"
    return {"phase": phase, "message": "created by the scale bench", "observedGeneration": 1}


def policy_status(versions: int) -> dict[str, Any]:
    return {
        "activeVersion": f"v{versions}",
        "previousVersion": f"v{versions - 1}" if versions > 1 else None,
        "latestVersion": f"v{versions}",
    }


def create_objects(api: Any, policies: int, versions: int, endpoint: str) -> None:
    """Create every policy and version with status, in parallel (the API server is the bottleneck)."""

    def one_policy(i: int) -> None:
        body = policy_body(i, endpoint, interval=30)
        created = api.create_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, body)
        name, uid = created["metadata"]["name"], created["metadata"]["uid"]
        api.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL, name, {"status": policy_status(versions)}
        )
        for n in range(1, versions + 1):
            mv = api.create_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.MODELVERSION_PLURAL, version_body(name, n, uid)
            )
            api.patch_namespaced_custom_object_status(
                c.GROUP,
                c.VERSION,
                NAMESPACE,
                c.MODELVERSION_PLURAL,
                mv["metadata"]["name"],
                {"status": version_status(n, versions)},
            )

    with ThreadPoolExecutor(max_workers=CREATE_WORKERS) as pool:
        list(pool.map(one_policy, range(policies)))


def change_every_spec(api: Any, policies: int, interval: int) -> dict[str, int]:
    """Bump every policy's generation; returns name -> the generation the operator must report."""

    def one(i: int) -> tuple[str, int]:
        name = f"model-{i:04d}"
        out = api.patch_namespaced_custom_object(
            c.GROUP,
            c.VERSION,
            NAMESPACE,
            c.RETRAINPOLICY_PLURAL,
            name,
            {"spec": {"triggers": {"checkIntervalSeconds": interval}}},
        )
        return name, int(out["metadata"]["generation"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, range(policies)))


def lagging(api: Any, want: dict[str, int]) -> list[str]:
    items = api.list_namespaced_custom_object(c.GROUP, c.VERSION, NAMESPACE, c.RETRAINPOLICY_PLURAL)["items"]
    seen = {o["metadata"]["name"]: (o.get("status") or {}).get("observedGeneration") for o in items}
    return sorted(name for name, gen in want.items() if seen.get(name) != gen)


# --- measurements -------------------------------------------------------------------------------


RequestKey = tuple[str, str, str, str]
"""(verb, group, resource, subresource) of an ``apiserver_request_total`` series."""

# What a RetrainPolicy operator talks to; the control plane's own loops use other resources
# (leases, endpoints, service accounts, ...), so this sum is the operator's share of an idle window.
OPERATOR_RESOURCES = {
    (c.GROUP, c.RETRAINPOLICY_PLURAL),
    (c.GROUP, c.MODELVERSION_PLURAL),
    ("coordination.k8s.io", "leases"),
    ("", "secrets"),
    ("", "pods"),
    ("", "events"),
    ("events.k8s.io", "events"),
    ("apps", "deployments"),
    ("batch", "jobs"),
}


def parse_request_counts(metrics_text: str) -> dict[RequestKey, float]:
    """``apiserver_request_total`` summed over codes and the other labels, per request kind."""
    out: dict[RequestKey, float] = {}
    for line in metrics_text.splitlines():
        m = _REQUEST_LINE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group("labels")))
            key = (
                labels.get("verb", ""),
                labels.get("group", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            out[key] = out.get(key, 0.0) + float(m.group("value"))
    return out


def parse_request_total(metrics_text: str) -> float:
    """Sum of apiserver_request_total over every label set (all verbs, resources and codes)."""
    return sum(parse_request_counts(metrics_text).values())


def requests_delta(before: dict[RequestKey, float], after: dict[RequestKey, float]) -> dict[RequestKey, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def operator_share(delta: dict[RequestKey, float]) -> float:
    """The part of an idle window's requests made to resources an operator of these kinds uses."""
    return sum(v for (_, group, resource, _), v in delta.items() if (group, resource) in OPERATOR_RESOURCES)


def describe(delta: dict[RequestKey, float], per_min: float) -> str:
    """The requests of a window, largest first: what an idle operator keeps asking for."""
    rows = sorted(delta.items(), key=lambda kv: -kv[1])
    return ", ".join(
        f"{verb} {group + '/' if group else ''}{res}{'/' + sub if sub else ''}: {v * per_min:.1f}"
        for (verb, group, res, sub), v in rows
    )


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def wait_until(what: str, done: Callable[[], bool], timeout: float, every: float = 0.25) -> float:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        time.sleep(every)  # poll interval of a condition
    return time.monotonic() - start


class OperatorRun:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            try:
                yield self.proc
            finally:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def measure(
    op: OperatorRun,
    api: Any,
    requests: Callable[[], dict[RequestKey, float]],
    policies: int,
    interval: int,
    idle_s: float,
    timeout: float,
) -> dict[str, float]:
    want = change_every_spec(api, policies, interval)
    started = time.monotonic()
    with op.running() as proc:

        def resynced() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{op.name} exited with status {proc.returncode}:\n{op.tail()}")
            return not lagging(api, want)

        try:
            wait_until(f"{op.name}: every policy at its new generation", resynced, timeout)
        except TimeoutError as e:
            raise RuntimeError(f"{e}; still lagging: {lagging(api, want)[:5]}\n{op.tail()}") from e
        resync = time.monotonic() - started
        before = requests()
        t0 = time.monotonic()
        # The idle window: nothing but the operator (and the control plane) talks to the API server.
        wait_until("idle window", lambda: proc.poll() is not None or time.monotonic() - t0 >= idle_s, idle_s + 5)
        if proc.poll() is not None:
            raise RuntimeError(f"{op.name} exited during the idle window:\n{op.tail()}")
        after = requests()
        rss, peak = rss_mib(proc.pid)
    window = time.monotonic() - t0
    delta = requests_delta(before, after)
    print(f"{op.name}, idle requests per minute by kind: {describe(delta, 60 / window)}", flush=True)
    return {
        "resync_s": resync,
        "requests_per_min": sum(delta.values()) * 60 / window,
        "operator_requests_per_min": operator_share(delta) * 60 / window,
        "rss_mib": rss,
        "peak_mib": peak,
    }


# --- the run ------------------------------------------------------------------------------------


@contextlib.contextmanager
def control_plane_and_minio(workdir: Path) -> Iterator[tuple[Any, Any]]:
    """The same real control plane and MinIO the tests use (modelloop_dev)."""
    from modelloop_dev.controlplane import ControlPlane
    from modelloop_dev.minio import MinioServer
    from modelloop_dev.processes import locate_tools

    bin_dir = locate_tools(Path(__file__).resolve().parent.parent)
    cp = ControlPlane(bin_dir, workdir / "controlplane")
    store = MinioServer(bin_dir, workdir / "minio")
    try:
        cp.start()
        store.start()
        yield cp, store
    finally:
        store.stop()
        cp.stop()


def pooled_client(cp: Any, connections: int) -> Any:
    """An admin client whose connection pool matches the creating threads (the library's default is 4)."""
    from kubernetes import client as k8s
    from kubernetes import config

    cfg = k8s.Configuration()
    config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = connections
    return k8s.ApiClient(cfg)


def install_crds(cp: Any, crds: Path) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(crds))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")


def run(policies: int, versions: int, idle_s: float, timeout: float) -> list[report.Measurement]:
    from kubernetes import client as k8s

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_s, control_plane_and_minio(Path(tmp_s)) as (cp, s3):
        tmp = Path(tmp_s)
        install_crds(cp, repo / "crds")
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl(
            "-n", NAMESPACE, "create", "secret", "generic", SECRET,
            f"--from-literal=accessKey={s3.access_key}", f"--from-literal=secretKey={s3.secret_key}",
        )  # fmt: skip
        s3.store("scale-bench")
        api = k8s.CustomObjectsApi(pooled_client(cp, CREATE_WORKERS))

        def requests() -> dict[RequestKey, float]:
            return parse_request_counts(cp.kubectl("get", "--raw", "/metrics").stdout)

        t = time.monotonic()
        create_objects(api, policies, versions, s3.endpoint)
        created_s = time.monotonic() - t
        print(f"created {policies} policies x {versions} versions with status in {created_s:.1f} s", flush=True)

        before = requests()
        t0 = time.monotonic()
        wait_until("idle window without an operator", lambda: time.monotonic() - t0 >= idle_s, idle_s + 5)
        quiet = requests_delta(before, requests())
        background = sum(quiet.values()) * 60 / (time.monotonic() - t0)
        background_share = operator_share(quiet) * 60 / (time.monotonic() - t0)
        print(f"no operator, idle requests per minute by kind: {describe(quiet, 60 / (time.monotonic() - t0))}")

        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        ours_cmd = shlex.split(os.environ.get(OPERATOR_CMD_ENV, "")) or [
            str(Path(sys.executable).with_name("modelloop-operator")),
            f"--namespace={NAMESPACE}",
            "--metrics-port=0",  # no fixed ports: other runs may hold 8080/8081
            "--liveness=",
        ]
        runs = {
            "bare": OperatorRun(
                "bare kopf operator",
                [sys.executable, "-m", "bench.bench_operator_scale", "--bare-operator"],
                env,
                tmp / "bare.log",
            ),
            "ours": OperatorRun("modelloop-operator", ours_cmd, env, tmp / "ours.log"),
        }
        results = {}
        for interval, key in enumerate(runs, start=31):
            try:
                results[key] = measure(runs[key], api, requests, policies, interval, idle_s, timeout)
            finally:
                if os.environ.get(KEEP_LOGS_ENV):
                    shutil.copy(runs[key].log, Path(os.environ[KEEP_LOGS_ENV]) / runs[key].log.name)
            print(f"{runs[key].name}: {results[key]}", flush=True)

    bare, ours = results["bare"], results["ours"]
    scale = f"{policies} policies x {versions} versions"
    resync_target = 2.0 * policies * versions / 100
    details = {
        "policies": policies,
        "versions": versions,
        "idle_seconds": idle_s,
        "background_requests_per_min": background,
        "background_operator_resources_per_min": background_share,
        "all_requests_per_min": {"bare": bare["requests_per_min"], "ours": ours["requests_per_min"]},
    }
    return [
        report.Measurement(
            name=f"operator RSS ({scale})", unit="MiB", baseline=bare["rss_mib"], figure=ours["rss_mib"],
            baseline_label="bare kopf operator, same kinds", figure_label="modelloop-operator",
            target="ratio <= 3", passed=ours["rss_mib"] <= 3 * bare["rss_mib"], details={**details, "peak_mib": ours["peak_mib"]},
        ),
        report.Measurement(
            name=f"resync after restart ({scale})", unit="s", baseline=bare["resync_s"], figure=ours["resync_s"],
            baseline_label="bare kopf operator writing observedGeneration", figure_label="modelloop-operator",
            target=f"figure < {resync_target:.0f} s (2 s per 100 versions, REQUIREMENTS)",
            passed=ours["resync_s"] < resync_target,
            details=details,
        ),
        report.Measurement(
            name=f"API requests per idle minute ({scale})", unit="req/min",
            baseline=bare["operator_requests_per_min"], figure=ours["operator_requests_per_min"],
            baseline_label="bare kopf operator (requests to the kinds an operator uses)",
            figure_label="modelloop-operator (same resources, same-length window)",
            target="figure - baseline <= 1 per policy",
            passed=ours["operator_requests_per_min"] - bare["operator_requests_per_min"] <= policies, details=details,
        ),
    ]  # fmt: skip


# --- counting pending corrections ---------------------------------------------------------------


def feedback_records(kind: str, n: int) -> list[bytes]:
    """``n`` reviews as the server writes them, in batches of ``FEEDBACK_BATCH`` (encoded JSON lines).

    Three in four are corrections; image inputs are referenced (``inputRef`` + digest), digit inputs
    are the 64 numbers the server kept inline.
    """
    from datetime import UTC, datetime

    from modelloop.api.feedback import FeedbackRecord, encode_batch

    at = datetime(2026, 1, 1, tzinfo=UTC)
    records = []
    for i in range(n):
        label, predicted = (1, 0) if i % 4 else (0, 0)
        common: dict[str, Any] = {"id": f"r-{i:06d}", "version": "v1", "predicted": predicted, "label": label}
        if kind == IMAGE:
            extra: dict[str, Any] = {
                "input_ref": f"s3://scale-bench/tasks/TASK-{i:06d}.jpg",
                "input_sha256": f"{i:064x}",
                "input_size": 180_000,
                "reason": "missed stain" if label else None,
                "reviewer": "static:inspector",
            }
        else:
            extra = {"input": [float((i + k) % 17) for k in range(64)]}
        records.append(FeedbackRecord(**common, **extra, reviewed_at=at))
    return [encode_batch(records[i : i + FEEDBACK_BATCH]) for i in range(0, n, FEEDBACK_BATCH)]


def count_feedback_once(model: str) -> None:
    """Run in a fresh process: one counting pass over ``model``'s feedback; prints seconds, RSS and counts."""
    import json
    import resource
    from datetime import UTC, datetime

    from modelloop.api.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus
    from modelloop.clients.objectstore import ObjectStore, StoreConfig
    from modelloop.handlers.retrainpolicy import _count_feedback

    config = StoreConfig(**json.loads(os.environ["MODELLOOP_BENCH_STORE"]))
    store = ObjectStore(config)
    spec = RetrainPolicySpec.model_validate(policy_body(0, config.endpoint, 30)["spec"] | {"model": model})
    status = RetrainPolicyStatus()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _count_feedback(store, spec, status, datetime.now(UTC), lambda q: None)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "seconds": seconds,
        "peakRssMiB": peak / 1024,
        "growthMiB": (peak - before) / 1024,
        "reviews": status.feedback.pending_reviews,
        "corrections": status.feedback.pending_corrections,
    }
    print(json.dumps(out), flush=True)


def run_feedback_count(records: int, rounds: int) -> list[report.Measurement]:
    import dataclasses
    import json
    import statistics

    from bench.servers import local_minio
    from modelloop.api.feedback import batch_key

    with tempfile.TemporaryDirectory(prefix="bench-count-") as tmp, local_minio(Path(tmp), "scale-bench") as store:
        stored = {}
        for kind in (IMAGE, DIGITS):
            batches = feedback_records(kind, records)
            for body in batches:
                store.put_bytes(batch_key(kind), body, "application/x-ndjson")
            stored[kind] = sum(len(b) for b in batches)
        env = {**os.environ, "MODELLOOP_BENCH_STORE": json.dumps(dataclasses.asdict(store.config))}
        results: dict[str, list[dict[str, float]]] = {IMAGE: [], DIGITS: []}
        for r in range(rounds):
            for kind in (IMAGE, DIGITS) if r % 2 == 0 else (DIGITS, IMAGE):
                argv = [sys.executable, "-m", "bench.bench_operator_scale", "--count-feedback", kind]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=600)
                results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
                last = results[kind][-1]
                print(
                    f"round {r + 1}/{rounds} {kind}: {last['reviews']:.0f} reviews "
                    f"({last['corrections']:.0f} corrections) counted in {last['seconds']:.2f} s, "
                    f"peak RSS {last['peakRssMiB']:.0f} MiB (+{last['growthMiB']:.1f} MiB while counting)",
                    flush=True,
                )
    for kind, rs in results.items():
        if any(x["reviews"] != records for x in rs):
            raise AssertionError(f"{kind}: counted {[x['reviews'] for x in rs]} reviews, expected {records}")

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in results[kind])

    details = {"rounds": rounds, "storedBytes": stored, IMAGE: results[IMAGE], DIGITS: results[DIGITS]}
    what = f"{records:,} pending reviews ({records * 3 // 4:,} corrections) in batches of {FEEDBACK_BATCH}"
    image_label = f"image corrections, receipts-joined, inputs by reference ({stored[IMAGE] / 2**20:.1f} MiB stored)"
    digits_label = f"digit reviews with 64 inputs inline ({stored[DIGITS] / 2**20:.1f} MiB stored)"
    return [
        report.Measurement(
            name=f"operator: time to count {what}",
            unit="s",
            baseline=med(DIGITS, "seconds"),
            figure=med(IMAGE, "seconds"),
            baseline_label=digits_label,
            figure_label=image_label,
            target="ratio <= 1.2 (flat in the input's size)",
            passed=med(IMAGE, "seconds") <= 1.2 * med(DIGITS, "seconds"),
            details=details,
        ),
        report.Measurement(
            name=f"operator: peak RSS counting {what}",
            unit="MiB",
            baseline=med(DIGITS, "peakRssMiB"),
            figure=med(IMAGE, "peakRssMiB"),
            baseline_label=digits_label,
            figure_label=image_label,
            target="ratio <= 1.1 (flat in the input's size)",
            passed=med(IMAGE, "peakRssMiB") <= 1.1 * med(DIGITS, "peakRssMiB"),
            details=details,
        ),
    ]


def main() -> None:
    p = report.parser(__doc__ or "")
    p.add_argument("--bare-operator", action="store_true", help="run the baseline operator (used by the bench itself)")
    p.add_argument("--policies", type=int, default=None, help="RetrainPolicies (default 200; 20 with --quick)")
    p.add_argument("--versions", type=int, default=None, help="ModelVersions per policy (default 20; 5 with --quick)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 60; 15 with --quick)")
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed for a resync")
    p.add_argument("--feedback-only", action="store_true", help="only the pending-corrections count comparison")
    p.add_argument("--feedback-records", type=int, default=FEEDBACK_RECORDS, help="pending reviews per kind")
    p.add_argument("--feedback-rounds", type=int, default=None, help="alternating rounds (default 4; 2 with --quick)")
    p.add_argument("--count-feedback", choices=(IMAGE, DIGITS), help=argparse.SUPPRESS)  # the bench's own child
    args = p.parse_args()
    if args.bare_operator:
        bare_operator()
        return
    if args.count_feedback:
        count_feedback_once(args.count_feedback)
        return
    for m in run_feedback_count(args.feedback_records, args.feedback_rounds or (2 if args.quick else 4)):
        report.emit(m)
    if args.feedback_only:
        return
    policies = args.policies or (20 if args.quick else 200)
    versions = args.versions or (5 if args.quick else 20)
    idle = args.idle_seconds or (15.0 if args.quick else 60.0)
    if policies < 1 or versions < 2 or idle <= 0:
        p.error("--policies must be >= 1, --versions >= 2 and --idle-seconds > 0")
    for m in run(policies, versions, idle, args.timeout):
        report.emit(m)


if __name__ == "__main__":
    main()
