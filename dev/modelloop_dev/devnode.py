"""The development node: a stand-in for kubelets, for tests and ``make demo`` only.

No kubelet runs in modelloop's development environment (no containers, no Docker). This module
registers one Node (labelled ``modelloop.dev/development-node=true``), binds the Pods nobody
scheduled to it (no kube-scheduler runs either), and runs each container's ``command + args`` as a
local process, reporting Pod status the way a kubelet does so that the real Job, Deployment and
garbage-collection controllers in kube-controller-manager drive them. It is not a container
runtime: the image is ignored (the command must be on the PATH of this virtualenv), there is no
isolation, and the stand-ins for namespaces are the ones ``docs/contracts.md`` lists under
"Development node ↔ Pods" (a loopback address per Pod, emptyDirs as temporary directories, a real
ServiceAccount token in a ``KUBECONFIG`` file).

It talks to the API server with nothing but urllib3 and the kubeconfig, so that it behaves the
same whichever Kubernetes client the rest of the project uses. Run it as ``modelloop-devnode
--kubeconfig PATH --workdir DIR`` or in a thread with :class:`DevNode`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml

log = logging.getLogger("modelloop.devnode")

NODE_LABEL: str = "modelloop.dev/development-node"
GPU_RESOURCE: str = "nvidia.com/gpu"
GPU_PRESENT_LABEL: str = "nvidia.com/gpu.present"
ENV_BIND_HOST: str = "MODELLOOP_BIND_HOST"
ENV_TERMINATION_LOG: str = "MODELLOOP_TERMINATION_LOG"
LEASE_DURATION_S: int = 40
LEASE_RENEW_S: float = 5.0
NODE_STATUS_S: float = 20.0
TICK_S: float = 0.2
TOKEN_EXPIRATION_S: int = 24 * 3600
MAX_TERMINATION_MESSAGE: int = 4096
FALLBACK_LOG_LINES: int = 80
BACKOFF_FIRST_S: float = 1.0
BACKOFF_MAX_S: float = 40.0
BACKOFF_RESET_AFTER_S: float = 60.0
PASSED_THROUGH_ENV: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "MPLCONFIGDIR",
    "TORCH_HOME",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "COVERAGE_PROCESS_START",
    # A checkout's own packages ahead of the virtualenv's editable install (a git worktree testing
    # its branch): without it the Pods would run whichever checkout the install points at.
    "PYTHONPATH",
)
READY_LINE: str = "development node ready:"
IP_REGISTRY: Path = Path(tempfile.gettempdir()) / "modelloop-devnode-ips"

Json = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# API access


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class KubeConfig:
    """The parts of a kubeconfig's current context that a client needs."""

    server: str
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = None
    client_cert_data: str | None = None
    client_key_data: str | None = None


def _file_or_data(entry: Mapping[str, Any], key: str, base: Path) -> str | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"]).decode()
    if entry.get(key):
        path = Path(entry[key])
        return (path if path.is_absolute() else base / path).read_text()
    return None


def load_kubeconfig(path: Path) -> KubeConfig:
    """Reads the current context of a kubeconfig (certificates inline or as files, or a token)."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a kubeconfig (expected a YAML mapping)")
    ctx_name = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    if ctx_name not in contexts:
        raise ValueError(f"{path}: current-context {ctx_name!r} is not among its contexts {sorted(contexts)}")
    ctx = contexts[ctx_name]
    clusters = {c["name"]: c["cluster"] for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    cluster = clusters.get(ctx.get("cluster"))
    if cluster is None:
        raise ValueError(f"{path}: context {ctx_name!r} names cluster {ctx.get('cluster')!r}, which is not defined")
    user = users.get(ctx.get("user"), {})
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_data=_file_or_data(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=token,
        client_cert_data=_file_or_data(user, "client-certificate", base),
        client_key_data=_file_or_data(user, "client-key", base),
    )


class Kube:
    """A minimal JSON-over-HTTPS client for the handful of calls a kubelet makes."""

    def __init__(self, config: KubeConfig, secrets_dir: Path) -> None:
        self.config = config
        kwargs: dict[str, Any] = {"maxsize": 16, "retries": False}
        if config.insecure:
            kwargs["cert_reqs"] = "CERT_NONE"
        elif config.ca_data:
            kwargs["ca_cert_data"] = config.ca_data
        if config.client_cert_data and config.client_key_data:
            secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cert, key = secrets_dir / "client.crt", secrets_dir / "client.key"
            for target, data in ((cert, config.client_cert_data), (key, config.client_key_data)):
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(data)
            kwargs.update(cert_file=str(cert), key_file=str(key))
        self.pool = urllib3.PoolManager(**kwargs)
        self.headers = {"Accept": "application/json", "User-Agent": "modelloop-devnode"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"
        self._watches: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()

    def _url(self, path: str, params: Mapping[str, Any] | None) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{self.config.server}{path}{query}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Json:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self.pool.request(method, self._url(path, params), body=data, headers=headers, timeout=timeout)
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(0, f"{method} {path}: API server unreachable: {e}") from e
        payload: Json = {}
        if resp.data:
            with contextlib.suppress(ValueError):
                payload = json.loads(resp.data)
        if resp.status >= 400:
            raise KubeError(resp.status, f"{method} {path}: {payload.get('message') or resp.data[:300]!r}")
        return payload

    def get(self, path: str, **params: Any) -> Json:
        """A read, retried briefly when the server says so (429, 503) or is momentarily unreachable."""
        for attempt in range(5):
            try:
                return self.request("GET", path, params=params or None)
            except KubeError as e:
                if e.status not in (0, 429, 503) or attempt == 4:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def watch(self, path: str, params: Mapping[str, Any]) -> Iterator[Json]:
        """Yields watch events until the server ends the watch; ``close_watches`` ends it early."""
        url = self._url(path, {**params, "watch": "true"})
        try:
            resp = self.pool.request(
                "GET",
                url,
                headers=self.headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=10.0, read=90.0),
            )
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(0, f"watch {path}: API server unreachable: {e}") from e
        if resp.status >= 400:
            raise KubeError(resp.status, f"watch {path}: {resp.read()[:300]!r}")
        with self._lock:
            self._watches.add(resp)
        try:
            buffer = b""
            for chunk in resp.stream(8192):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(0, f"watch {path} interrupted: {e}") from e
        finally:
            with self._lock:
                self._watches.discard(resp)
            resp.release_conn()

    def close_watches(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for resp in watches:
            with contextlib.suppress(Exception):
                resp.shutdown()


# ---------------------------------------------------------------------------------------------
# Pure decisions: scheduling, environment, status


def fits_node(pod: Json, labels: Mapping[str, str]) -> str | None:
    """Returns why the Pod cannot run on a node with these labels, or None when it can.

    nodeSelector and required node affinity are honoured; taints and tolerations are not
    (the development node has no taints), which is the "loosely" of the brief.
    """
    spec = pod.get("spec") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return f"nodeSelector {key}={value} does not match the development node's labels"
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = affinity.get("nodeSelectorTerms") or []
    if terms and not any(_term_matches(t, labels) for t in terms):
        return "no required nodeAffinity term matches the development node's labels"
    return None


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for expr in term.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
            "Gt": present and _int_or_none(labels.get(key)) is not None and int(labels[key]) > int(values[0]),
            "Lt": present and _int_or_none(labels.get(key)) is not None and int(labels[key]) < int(values[0]),
        }.get(op, False)
        if not ok:
            return False
    return True


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class EnvError(Exception):
    """A container's environment cannot be built yet (kubelet reason CreateContainerConfigError)."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones left, ``$$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, value)


def rewrite_mounts(value: str, mounts: Mapping[str, Path]) -> str:
    """An env value equal to or under a volume's mountPath points at that volume's directory instead."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        base = mount_path.rstrip("/") or "/"
        if value == base or value.startswith(base.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(base.rstrip("/")) :]
    return value


_FIELD_INDEX = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Json, path: str, pod_ip: str, node_name: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    m = _FIELD_INDEX.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise EnvError(f"fieldRef {path!r} is not supported by the development node")


ObjectGetter = Callable[[str, str], Json | None]  # (kind "secrets"|"configmaps", name) -> object or None


def _lookup(get: ObjectGetter, kind: str, ref: Mapping[str, Any], key: str | None) -> str | None:
    name = ref.get("name", "")
    obj = get(kind, name)
    label = "secret" if kind == "secrets" else "configmap"
    if obj is None:
        if ref.get("optional"):
            return None
        raise EnvError(f'{label} "{name}" not found')
    if key is None:
        return ""
    if kind == "secrets":
        raw = (obj.get("data") or {}).get(key)
        value = base64.b64decode(raw).decode() if raw is not None else (obj.get("stringData") or {}).get(key)
    else:
        value = (obj.get("data") or {}).get(key)
    if value is None:
        if ref.get("optional"):
            return None
        raise EnvError(f'couldn\'t find key {key} in {label} "{name}"')
    return str(value)


def resolve_env(
    container: Json,
    pod: Json,
    get: ObjectGetter,
    *,
    pod_ip: str,
    node_name: str,
    mounts: Mapping[str, Path],
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment a kubelet would give this container, with the node's stand-ins applied.

    Order as in the kubelet: ``envFrom`` first, then ``env`` (which wins), ``$(VAR)`` expanded
    against what came before. ``base`` (PATH etc. and the node's own variables) is overridden by both.
    """
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = get(kind, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{"secret" if kind == "secrets" else "configmap"} "{ref.get("name")}" not found')
            for key, raw in (obj.get("data") or {}).items():
                env[prefix + key] = base64.b64decode(raw).decode() if kind == "secrets" else str(raw)
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        src = var["valueFrom"]
        value: str | None
        if "secretKeyRef" in src:
            value = _lookup(get, "secrets", src["secretKeyRef"], src["secretKeyRef"].get("key", ""))
        elif "configMapKeyRef" in src:
            value = _lookup(get, "configmaps", src["configMapKeyRef"], src["configMapKeyRef"].get("key", ""))
        elif "fieldRef" in src:
            value = field_value(pod, src["fieldRef"].get("fieldPath", ""), pod_ip, node_name)
        elif "resourceFieldRef" in src:
            value = _resource_value(container, src["resourceFieldRef"])
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(src)}")
        if value is not None:
            env[name] = value
    # Only the Pod's own values are paths inside its "container"; the node's (KUBECONFIG, the
    # termination log) are real paths already, even when they happen to lie under a mountPath.
    return {k: v if base.get(k) == v else rewrite_mounts(v, mounts) for k, v in env.items()}


def _resource_value(container: Json, ref: Mapping[str, Any]) -> str:
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if value is None:
        return str(os.cpu_count() or 1) if resource == "cpu" else "0"
    return str(value)


@dataclass
class Condition:
    status: bool
    reason: str | None = None
    since: str = field(default_factory=now_iso)


def condition_json(kind: str, cond: Condition) -> Json:
    out: Json = {"type": kind, "status": "True" if cond.status else "False", "lastTransitionTime": cond.since}
    if cond.reason:
        out["reason"] = cond.reason
    return out


def pod_phase(restart_policy: str, outcomes: list[int | None], will_restart: list[bool]) -> str:
    """Running while any container runs or will restart; else Succeeded when all exited 0, else Failed.

    ``outcomes[i]`` is the last exit code of container i (None: running or never ran).
    """
    if any(code is None for code in outcomes) or any(will_restart):
        return "Running"
    return "Succeeded" if all(code == 0 for code in outcomes) else "Failed"


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def backoff_delay(restarts: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** max(0, restarts - 1))))


def termination_message(term_file: Path | None, log_file: Path, policy: str, exit_code: int) -> str | None:
    """What a kubelet puts in ``state.terminated.message``: the termination log, else the log tail on error."""
    if term_file is not None and term_file.exists():
        text = term_file.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace").strip()
        if text:
            return text
    if policy == "FallbackToLogsOnError" and exit_code != 0 and log_file.exists():
        lines = log_file.read_bytes()[-MAX_TERMINATION_MESSAGE * 4 :].decode(errors="replace").splitlines()
        tail = "\n".join(lines[-FALLBACK_LOG_LINES:])
        return tail[-MAX_TERMINATION_MESSAGE:].strip() or None
    return None


# ---------------------------------------------------------------------------------------------
# Loopback addresses: one per Pod, unique across every development node on this machine


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_ip(ip: str, registry: Path = IP_REGISTRY) -> bool:
    """Claims ``ip`` again for a Pod that already had it (the node restarted); False if another owns it."""
    registry.mkdir(parents=True, exist_ok=True)
    claim = registry / ip
    try:
        owner = int(claim.read_text().strip() or "0")
    except (OSError, ValueError):
        owner = 0
    if owner and owner != os.getpid() and _pid_alive(owner):
        return False
    claim.write_text(str(os.getpid()))
    return True


def allocate_ip(registry: Path = IP_REGISTRY) -> str:
    """Claims a free 127.0.x.y address (x, y in 2..254) with an exclusive file in ``registry``.

    Concurrent test sessions each run their own development node on one machine; the registry keeps
    them from handing the same address (and so the same host:port) to two Pods.
    """
    registry.mkdir(parents=True, exist_ok=True)
    candidates = [(x, y) for x in range(2, 255) for y in range(2, 255)]
    start = random.randrange(len(candidates))
    for i in range(len(candidates)):
        x, y = candidates[(start + i) % len(candidates)]
        ip = f"127.0.{x}.{y}"
        claim = registry / ip
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = int(claim.read_text().strip() or "0")
            except (OSError, ValueError):
                continue
            if owner and not _pid_alive(owner):
                with contextlib.suppress(OSError):
                    claim.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return ip
    raise RuntimeError(f"no free loopback address left in {registry}: remove stale files there")


def release_ip(ip: str, registry: Path = IP_REGISTRY) -> None:
    with contextlib.suppress(OSError):
        (registry / ip).unlink()


# ---------------------------------------------------------------------------------------------
# Containers as processes


def _die_with_parent() -> None:
    """Runs in the child before exec: it is killed if the node (the thread that started it) dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Probe:
    spec: Json
    successes: int = 0
    failures: int = 0
    passing: bool = False
    next_at: float = 0.0


@dataclass
class Container:
    spec: Json
    init: bool
    log_file: Path
    term_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    restart_count: int = 0
    exit_code: int | None = None
    terminated: Json | None = None
    last_state: Json | None = None
    waiting: tuple[str, str | None] | None = ("ContainerCreating", None)
    next_start: float = 0.0
    kill_deadline: float | None = None
    kill_reason: str | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    done: bool = False  # terminated and will not restart

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        return self.running and (self.readiness is None or self.readiness.passing)


def _port(container: Json, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} is not declared by container {container.get('name')}")


def run_probe(spec: Json, container: Json, ip: str, env: Mapping[str, str], cwd: Path) -> tuple[bool, str]:
    """One probe attempt as a kubelet makes it, against the Pod's own loopback address."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            host = get.get("host") or ip
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{host}:{_port(container, get['port'])}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            with urllib3.PoolManager(cert_reqs="CERT_NONE", retries=False) as pool:
                resp = pool.request("GET", url, headers=headers, timeout=timeout)
            return 200 <= resp.status < 400, f"HTTP probe {url} returned {resp.status}"
        if "tcpSocket" in spec:
            port = _port(container, spec["tcpSocket"]["port"])
            with socket.create_connection((spec["tcpSocket"].get("host") or ip, port), timeout=timeout):
                return True, ""
        if "exec" in spec:
            result = subprocess.run(
                spec["exec"]["command"], env=dict(env), cwd=cwd, capture_output=True, timeout=timeout, check=False
            )
            return result.returncode == 0, result.stdout.decode(errors="replace")[-200:]
    except (OSError, urllib3.exceptions.HTTPError, subprocess.TimeoutExpired, ValueError) as e:
        return False, str(e)
    return True, "probe type not supported by the development node; assumed passing"


class PodRunner:
    """Runs one Pod's containers and reports its status; one thread per Pod, the only writer of it."""

    def __init__(self, node: DevNode, pod: Json) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = node.workdir / f"{self.ns}_{self.name}"
        self.ip = ""
        self.spec: Json = pod.get("spec") or {}
        self.restart_policy: str = self.spec.get("restartPolicy", "Always")
        self.containers: list[Container] = []
        self.init_containers: list[Container] = []
        self.mounts: dict[str, Path] = {}
        self.kubeconfig: Path | None = None
        self.start_time = now_iso()
        self.start_mono = time.monotonic()
        self.conditions: dict[str, Condition] = {}
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.stop_requested = threading.Event()  # processes must stop: deletion or deadline
        self.deleting = threading.Event()  # the Pod has a deletionTimestamp: finish it once stopped
        self.grace_s: float = 30.0
        self.gone = threading.Event()  # the Pod object no longer exists
        self.finished = threading.Event()
        self.last_written: Json | None = None
        self._objects: dict[tuple[str, str], Json | None] = {}
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.key}", daemon=True)

    # -- lifecycle requested by the node's watch
    def request_stop(self, grace_s: float) -> None:
        self.grace_s = min(self.grace_s, max(0.0, grace_s)) if self.stop_requested.is_set() else max(0.0, grace_s)
        self.stop_requested.set()
        self.deleting.set()

    def update(self, pod: Json) -> None:
        self.pod = pod

    # -- the Pod's thread
    def _run(self) -> None:
        try:
            delay = 1.0
            while True:
                try:
                    self._setup()
                    break
                except KubeError as e:  # the API server restarting, a Secret not there yet: try again
                    if self.gone.is_set() or self.deleting.is_set():
                        if self.deleting.is_set():
                            self._finish_deletion()
                        return
                    log.warning("pod %s: cannot prepare it yet (retrying in %.0fs): %s", self.key, delay, e)
                    self.gone.wait(delay)
                    delay = min(delay * 2, 30.0)
            self._loop()
        except Exception:
            log.exception("pod %s: the development node failed to run it; killing its processes", self.key)
            self._kill_all(signal.SIGKILL)
        finally:
            if self.ip:
                release_ip(self.ip)
            self.finished.set()

    def _setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ip:
            previous = str((self.pod.get("status") or {}).get("podIP") or "")
            # A Pod this node ran before it restarted keeps its address: podIP is immutable once set.
            self.ip = previous if previous.startswith("127.") and claim_ip(previous) else allocate_ip()
        self.init_containers, self.containers, self.mounts = [], [], {}
        self.grace_s = float(self.spec.get("terminationGracePeriodSeconds", 30))
        volumes_dir = self.dir / "volumes"
        volume_dirs: dict[str, Path] = {}
        for vol in self.spec.get("volumes") or []:
            target = volumes_dir / vol["name"]
            target.mkdir(parents=True, exist_ok=True)
            volume_dirs[vol["name"]] = target
            if "emptyDir" not in vol:
                self._materialize(vol, target)
        for c in self.spec.get("initContainers") or []:
            self.init_containers.append(self._container(c, init=c.get("restartPolicy") != "Always"))
        for c in self.spec.get("containers") or []:
            self.containers.append(self._container(c, init=False))
        for c in [*self.init_containers, *self.containers]:
            for m in c.spec.get("volumeMounts") or []:
                if m.get("name") in volume_dirs:
                    self.mounts.setdefault(m["mountPath"], volume_dirs[m["name"]] / m.get("subPath", ""))
        projected_token = any(
            "serviceAccountToken" in src
            for vol in self.spec.get("volumes") or []
            for src in (vol.get("projected") or {}).get("sources") or []
        )
        # A Pod that turns automounting off and projects the token into one container still needs
        # it there; the processes here share one environment, so every container gets the kubeconfig.
        if self.spec.get("automountServiceAccountToken", True) is not False or projected_token:
            self.kubeconfig = self._service_account_kubeconfig()
        self.conditions = {
            "PodReadyToStartContainers": Condition(True),
            "Initialized": Condition(not any(c.init for c in self.init_containers)),
            "Ready": Condition(False, "ContainersNotReady"),
            "ContainersReady": Condition(False, "ContainersNotReady"),
            "PodScheduled": Condition(True),
        }
        images = sorted({str(c.spec.get("image", "")) for c in [*self.init_containers, *self.containers]})
        log.info("pod %s: running at %s as local processes (images %s are ignored)", self.key, self.ip, images)
        self._write_status()

    def _container(self, spec: Json, init: bool) -> Container:
        c = Container(
            spec=spec,
            init=init,
            log_file=self.dir / f"{spec['name']}.log",
            term_file=self.dir / f"{spec['name']}.termination-log",
        )
        if not init:
            if spec.get("readinessProbe"):
                c.readiness = Probe(spec["readinessProbe"])
            if spec.get("livenessProbe"):
                c.liveness = Probe(spec["livenessProbe"])
            if spec.get("startupProbe"):
                c.startup = Probe(spec["startupProbe"])
        return c

    def _materialize(self, vol: Json, target: Path) -> None:
        """Secret and ConfigMap volumes become files, so that a mountPath in env finds them."""
        for kind, key in (("secrets", "secret"), ("configmaps", "configMap")):
            if key not in vol:
                continue
            src = vol[key]
            obj = self._get_object(kind, src.get("secretName") or src.get("name", ""))
            for k, raw in ((obj or {}).get("data") or {}).items():
                (target / k).write_bytes(base64.b64decode(raw) if kind == "secrets" else str(raw).encode())

    def _service_account_kubeconfig(self) -> Path:
        """A kubeconfig holding a token bound to this Pod: the container acts as its ServiceAccount."""
        sa = self.spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_EXPIRATION_S,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        resp = self.node.kube.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        token = resp["status"]["token"]
        cluster: Json = {"server": self.node.kube.config.server}
        if self.node.kube.config.insecure:
            cluster["insecure-skip-tls-verify"] = True
        elif self.node.kube.config.ca_data:
            cluster["certificate-authority-data"] = base64.b64encode(self.node.kube.config.ca_data.encode()).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": f"system:serviceaccount:{self.ns}:{sa}", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {
                        "cluster": "cluster",
                        "user": f"system:serviceaccount:{self.ns}:{sa}",
                        "namespace": self.ns,
                    },
                }
            ],
            "current-context": "pod",
        }
        path = self.dir / "serviceaccount.kubeconfig"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f)
        return path

    def _get_object(self, kind: str, name: str) -> Json | None:
        try:
            return self.node.kube.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def _env(self, c: Container) -> dict[str, str]:
        base = {k: os.environ[k] for k in PASSED_THROUGH_ENV if k in os.environ}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', os.defpath)}"
        base.update(
            {
                "HOSTNAME": self.name,
                ENV_BIND_HOST: self.ip,
                ENV_TERMINATION_LOG: str(c.term_file),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.kubeconfig is not None:
            base["KUBECONFIG"] = str(self.kubeconfig)
        return resolve_env(
            c.spec,
            self.pod,
            self._get_object,
            pod_ip=self.ip,
            node_name=self.node.name,
            mounts=self.mounts,
            base=base,
        )

    def _start(self, c: Container) -> None:
        try:
            env = self._env(c)
        except EnvError as e:
            if c.waiting != ("CreateContainerConfigError", str(e)):
                log.warning("pod %s container %s cannot start yet: %s (retrying)", self.key, c.name, e)
            c.waiting = ("CreateContainerConfigError", str(e))
            c.next_start = time.monotonic() + 1.0
            return
        argv = [expand(str(a), env) for a in [*(c.spec.get("command") or []), *(c.spec.get("args") or [])]]
        argv = [rewrite_mounts(a, self.mounts) for a in argv]
        if not argv:
            c.waiting = (
                "CreateContainerError",
                "the development node runs containers as local processes and needs an explicit command; "
                f"container {c.name} relies on its image's entrypoint",
            )
            c.next_start = time.monotonic() + 5.0
            return
        cwd = Path(rewrite_mounts(c.spec["workingDir"], self.mounts)) if c.spec.get("workingDir") else self.dir
        c.term_file.unlink(missing_ok=True)
        started = now_iso()
        executable = shutil.which(argv[0], path=env.get("PATH"))
        if executable is None:
            self._record_exit(c, 128, "StartError", f'exec: "{argv[0]}": executable file not found in $PATH', started)
            return
        with c.log_file.open("ab") as out:
            c.proc = subprocess.Popen(
                [executable, *argv[1:]],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl: safe with threads
            )
        c.started_at, c.started_mono = started, time.monotonic()
        c.waiting, c.terminated, c.exit_code, c.kill_deadline, c.kill_reason = None, None, None, None, None
        for probe in (c.readiness, c.liveness, c.startup):
            if probe is not None:
                probe.successes = probe.failures = 0
                probe.passing = False
                probe.next_at = c.started_mono + float(probe.spec.get("initialDelaySeconds", 0))
        shown = " ".join(argv).replace("\n", "\\n")[:200]
        log.info("pod %s container %s started: pid %d, %s", self.key, c.name, c.proc.pid, shown)

    def _record_exit(self, c: Container, code: int, reason: str | None, message: str | None, started: str) -> None:
        if reason is None:
            reason = "Completed" if code == 0 else "Error"
        if message is None:
            message = termination_message(c.term_file, c.log_file, c.spec.get("terminationMessagePolicy", "File"), code)
        term: Json = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now_iso(),
            "containerID": f"devnode://{self.uid}/{c.name}",
        }
        if message:
            term["message"] = message
        c.terminated, c.exit_code, c.proc = term, code, None
        ran = time.monotonic() - c.started_mono if c.started_mono else 0.0
        if c.init:  # an init container that succeeded is done; one that failed is retried unless Never
            policy = "Never" if self.restart_policy == "Never" else "OnFailure"
        else:
            policy = "Always" if c.spec.get("restartPolicy") == "Always" else self.restart_policy
        restart = not self.stop_requested.is_set() and should_restart(policy, code)
        level = logging.INFO if code == 0 or self.stop_requested.is_set() else logging.WARNING
        log.log(
            level,
            "pod %s container %s exited %d (%s)%s",
            self.key,
            c.name,
            code,
            reason,
            f": {message[-300:]}" if message else "",
        )
        if restart:
            c.restart_count += 1
            c.last_state = {"terminated": term}
            delay = 0.0 if ran > BACKOFF_RESET_AFTER_S else backoff_delay(c.restart_count)
            c.next_start = time.monotonic() + delay
            c.waiting = (
                "CrashLoopBackOff",
                f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.name}",
            )
        else:
            c.done = True
            c.waiting = None

    def _reap(self, c: Container) -> None:
        if c.proc is None:
            return
        code = c.proc.poll()
        if code is None:
            if c.kill_deadline is not None and time.monotonic() >= c.kill_deadline:
                self._signal(c, signal.SIGKILL)
            return
        if code < 0:
            code = 128 - code
        self._record_exit(c, code, c.kill_reason, None, c.started_at or now_iso())

    def _signal(self, c: Container, sig: signal.Signals) -> None:
        if c.proc is not None and c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, sig)

    def _kill(self, c: Container, grace_s: float, reason: str | None) -> None:
        if c.proc is None or c.kill_deadline is not None:
            return
        c.kill_reason = reason
        c.kill_deadline = time.monotonic() + grace_s
        self._signal(c, signal.SIGTERM)

    def _kill_all(self, sig: signal.Signals) -> None:
        for c in [*self.init_containers, *self.containers]:
            self._signal(c, sig)
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=5)

    def _probe(self, c: Container, probe: Probe | None, liveness: bool) -> None:
        if probe is None or not c.running or time.monotonic() < probe.next_at:
            return
        probe.next_at = time.monotonic() + float(probe.spec.get("periodSeconds", 10))
        ok, detail = run_probe(probe.spec, c.spec, self.ip, self._env_for_probe(probe), self.dir)
        if ok:
            probe.successes, probe.failures = probe.successes + 1, 0
            if probe.successes >= int(probe.spec.get("successThreshold", 1)):
                probe.passing = True
        else:
            probe.failures, probe.successes = probe.failures + 1, 0
            if probe.failures >= int(probe.spec.get("failureThreshold", 3)):
                if probe.passing or liveness:
                    log.warning(
                        "pod %s container %s %s probe failed %d times: %s",
                        self.key,
                        c.name,
                        "liveness" if liveness else "readiness",
                        probe.failures,
                        detail,
                    )
                probe.passing = False
                if liveness:
                    grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
                    self._kill(c, grace, "Error")

    def _env_for_probe(self, probe: Probe) -> dict[str, str]:
        base = {k: os.environ[k] for k in PASSED_THROUGH_ENV if k in os.environ}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', os.defpath)}"
        return base if "exec" in probe.spec else {}

    def _loop(self) -> None:
        deadline = self.spec.get("activeDeadlineSeconds")
        stop_started: float | None = None
        while True:
            if self.gone.is_set():
                self._kill_all(signal.SIGKILL)
                return
            now = time.monotonic()
            if self.stop_requested.is_set():
                if stop_started is None:
                    stop_started = now
                    why = "deleted" if self.deleting.is_set() else "past its deadline"
                    log.info("pod %s: %s, stopping its processes (grace %.0fs)", self.key, why, self.grace_s)
                for c in [*self.init_containers, *self.containers]:
                    self._kill(c, self.grace_s, None)
                    if c.kill_deadline is not None:
                        c.kill_deadline = min(c.kill_deadline, stop_started + self.grace_s)
                    c.next_start = float("inf")
            elif (
                deadline is not None
                and now - self.start_mono > float(deadline)
                and self.phase not in ("Succeeded", "Failed")
            ):
                self.reason, self.message = (
                    "DeadlineExceeded",
                    f"Pod was active on the node longer than the specified deadline ({deadline}s)",
                )
                log.warning("pod %s: %s; killing it", self.key, self.message)
                self.stop_requested.set()
                self.grace_s = 0.0
                continue
            for c in [*self.init_containers, *self.containers]:
                self._reap(c)
            self._advance()
            for c in self.containers:
                if c.startup is not None and not c.startup.passing:
                    self._probe(c, c.startup, liveness=True)  # the other probes wait for it, as in a kubelet
                    continue
                self._probe(c, c.readiness, liveness=False)
                self._probe(c, c.liveness, liveness=True)
            self._compute_phase()
            self._write_status()
            if self.phase in ("Succeeded", "Failed") and not any(
                c.running for c in [*self.init_containers, *self.containers]
            ):
                if self.deleting.is_set():
                    self._finish_deletion()
                return
            if self.deleting.is_set() and not any(c.running for c in [*self.init_containers, *self.containers]):
                self._finish_deletion()
                return
            if self.stop_requested.is_set():
                time.sleep(TICK_S)  # waiting for processes to exit; there is nothing to wake on
            else:
                self.stop_requested.wait(TICK_S)

    def _advance(self) -> None:
        """Starts what is due: init containers one by one, then every app container."""
        if self.stop_requested.is_set():
            return
        now = time.monotonic()
        for c in self.init_containers:
            if not c.init:  # a sidecar-style init container: started in order, kept running
                if c.proc is None and not c.done and now >= c.next_start:
                    self._start(c)
                continue
            if c.done and c.exit_code == 0:
                continue
            if c.done:  # failed and will not restart: the Pod fails
                return
            if c.proc is None and now >= c.next_start:
                self._start(c)
            return
        if not self.conditions["Initialized"].status:
            self.conditions["Initialized"] = Condition(True)
        for c in self.containers:
            if c.proc is None and not c.done and now >= c.next_start:
                self._start(c)

    def _compute_phase(self) -> None:
        if self.reason == "DeadlineExceeded":
            if not any(c.running for c in [*self.init_containers, *self.containers]):
                self.phase = "Failed"
        elif any(c.init and c.done and c.exit_code != 0 for c in self.init_containers):
            self.phase = "Failed"
        elif not self.conditions["Initialized"].status or all(
            c.started_at is None and c.terminated is None for c in self.containers
        ):
            self.phase = "Pending"
        else:
            outcomes = [None if (c.proc is not None or not c.done) else c.exit_code for c in self.containers]
            self.phase = pod_phase(self.restart_policy, outcomes, [False] * len(self.containers))
        all_stopped = not any(c.running for c in [*self.init_containers, *self.containers])
        if self.stop_requested.is_set() and all_stopped and self.phase not in ("Succeeded", "Failed"):
            codes = [c.exit_code for c in self.containers]
            self.phase = "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"
        ready = bool(self.containers) and all(c.ready for c in self.containers) and self.phase == "Running"
        reason = None if ready else ("PodCompleted" if self.phase in ("Succeeded", "Failed") else "ContainersNotReady")
        for kind in ("ContainersReady", "Ready"):
            if self.conditions[kind].status != ready:
                self.conditions[kind] = Condition(ready, reason)
            elif not ready and self.conditions[kind].reason != reason:
                self.conditions[kind].reason = reason

    def _container_status(self, c: Container) -> Json:
        state: Json
        if c.running:
            state = {"running": {"startedAt": c.started_at}}
        elif c.waiting is not None and not c.done:
            state = {"waiting": {"reason": c.waiting[0], **({"message": c.waiting[1]} if c.waiting[1] else {})}}
        elif c.terminated is not None:
            state = {"terminated": c.terminated}
        else:
            state = {"waiting": {"reason": "PodInitializing"}}
        return {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "containerID": f"devnode://{self.uid}/{c.name}",
            "ready": c.ready,
            "started": c.running,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": c.last_state or {},
        }

    def _write_status(self) -> None:
        status: Json = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": [condition_json(k, v) for k, v in self.conditions.items()],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if self.reason:
            status["reason"], status["message"] = self.reason, self.message
        if status == self.last_written:
            return
        try:
            self.node.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                content_type="application/strategic-merge-patch+json",
            )
            self.last_written = status
        except KubeError as e:
            if e.status == 404:
                self.gone.set()
            else:
                log.warning("pod %s: status update failed, will retry: %s", self.key, e)

    def _finish_deletion(self) -> None:
        """What a kubelet does once the containers are gone: delete with grace 0 (finalizers stay)."""
        try:
            self.node.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
            log.info("pod %s: processes stopped, deletion finished", self.key)
        except KubeError as e:
            if e.status not in (404, 409):
                log.warning("pod %s: could not finish its deletion: %s", self.key, e)


# ---------------------------------------------------------------------------------------------
# The node


def _node_resources(gpus: int) -> dict[str, str]:
    mem_kib = 8 * 1024 * 1024
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{mem_kib}Ki",
        "pods": "110",
        "ephemeral-storage": "100Gi",
        GPU_RESOURCE: str(gpus),
    }


class DevNode:
    """A development node: registers a Node, binds unscheduled Pods to it and runs them as processes."""

    def __init__(
        self,
        kubeconfig: Path,
        name: str = "modelloop-devnode",
        workdir: Path | None = None,
        gpus: int = 1,
        namespaces: Collection[str] = (),
    ) -> None:
        """``namespaces``, when given, limits which unscheduled Pods it binds (tests share one API server)."""
        self.name = name
        self.namespaces = frozenset(namespaces)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="modelloop-devnode-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gpus = gpus
        self.kube = Kube(load_kubeconfig(Path(kubeconfig)), self.workdir / ".node-credentials")
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            NODE_LABEL: "true",
            GPU_PRESENT_LABEL: "true",
        }
        self.runners: dict[str, PodRunner] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.ready = threading.Event()

    # -- public
    def start(self) -> None:
        self._register()
        for target, name in ((self._heartbeat, "heartbeat"), (self._watch_pods, "watch")):
            t = threading.Thread(target=target, name=f"devnode-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops every Pod's processes (SIGTERM, then SIGKILL after ``grace_s``) and the node's threads."""
        self._stop.set()
        self.kube.close_watches()
        with self._lock:
            runners = list(self.runners.values())
        for r in runners:
            for c in [*r.init_containers, *r.containers]:
                r._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for r in runners:
            for c in [*r.init_containers, *r.containers]:
                if c.proc is not None:
                    try:
                        c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        r._signal(c, signal.SIGKILL)
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            c.proc.wait(timeout=5)
            r.gone.set()
        for t in self._threads:
            t.join(timeout=10)
        for r in runners:
            r.thread.join(timeout=10)
            if r.ip:
                release_ip(r.ip)

    # -- Node object, Lease and heartbeats
    def _node_status(self) -> Json:
        now = now_iso()
        resources = _node_resources(self.gpus)

        def cond(kind: str, status: str, reason: str, message: str) -> Json:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "development node"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "development node"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "development node"),
                cond("Ready", "True", "KubeletReady", "modelloop development node is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "modelloop-devnode",
                "systemUUID": "modelloop-devnode",
                "bootID": str(os.getpid()),
                "kernelVersion": os.uname().release,
                "osImage": "modelloop development node (local processes, no container runtime)",
                "containerRuntimeVersion": "devnode://0",
                "kubeletVersion": "v0.0.0-modelloop-devnode",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self) -> None:
        self._started_at = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": self.labels,
                "annotations": {
                    "modelloop.dev/development-node": "stands in for a kubelet: runs Pods as local processes, for tests and make demo only"
                },
            },
            "spec": {},
        }
        try:
            node = self.kube.request("POST", "/api/v1/nodes", body)
        except KubeError as e:
            if e.status != 409:
                raise
            node = self.kube.request(
                "PATCH",
                f"/api/v1/nodes/{self.name}",
                {"metadata": {"labels": self.labels}},
                content_type="application/merge-patch+json",
            )
        self._node_uid = node["metadata"]["uid"]
        self._post_status()
        self._renew_lease()
        log.info(
            "development node %s registered (%s GPU(s) advertised, workdir %s)", self.name, self.gpus, self.workdir
        )

    def _post_status(self) -> None:
        self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            {"status": self._node_status()},
            content_type="application/strategic-merge-patch+json",
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": now_micro()}
        try:
            self.kube.request("PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")
        except KubeError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._node_uid}
            self.kube.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_S:
                    self._post_status()
                    last_status = time.monotonic()
            except KubeError as e:
                log.warning(
                    "development node %s: heartbeat failed (the node turns NotReady if this lasts %ds): %s",
                    self.name,
                    LEASE_DURATION_S,
                    e,
                )

    # -- Pods
    def _watch_pods(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = self.kube.get("/api/v1/pods")
                    rv = listing["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in listing.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self._handle("ADDED", pod)
                    self._forget_missing(seen)
                    self.ready.set()
                for event in self.kube.watch(
                    "/api/v1/pods", {"resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": 60}
                ):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                        else:
                            log.warning("pod watch error: %s", obj.get("message"))
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if event.get("type") != "BOOKMARK":
                        self._handle(str(event.get("type")), obj)
            except KubeError as e:
                if self._stop.is_set():
                    return
                if e.status == 410:
                    rv = None
                    continue
                log.warning("pod watch failed, retrying in 1s: %s", e)
                self._stop.wait(1.0)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("pod watch crashed, relisting in 1s")
                rv = None
                self._stop.wait(1.0)

    def _forget_missing(self, seen: set[str]) -> None:
        with self._lock:
            for key, runner in list(self.runners.items()):
                if runner.uid not in seen:
                    runner.gone.set()
                    del self.runners[key]

    def _handle(self, kind: str, pod: Json) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        phase = (pod.get("status") or {}).get("phase")
        if kind == "DELETED":
            with self._lock:
                runner = self.runners.get(key)
                if runner is not None and runner.uid == meta.get("uid"):
                    runner.gone.set()
                    del self.runners[key]
            return
        node_name = spec.get("nodeName")
        if not node_name:
            if meta.get("deletionTimestamp") or spec.get("schedulerName", "default-scheduler") != "default-scheduler":
                return
            if self.namespaces and meta.get("namespace") not in self.namespaces:
                return
            self._bind(pod)
            return
        if node_name != self.name:
            return
        with self._lock:
            runner = self.runners.get(key)
            if runner is not None and runner.uid != meta.get("uid"):
                runner.gone.set()
                runner = None
            if runner is None:
                if phase in ("Succeeded", "Failed"):
                    if meta.get("deletionTimestamp"):
                        self._delete_now(pod)
                    return
                runner = PodRunner(self, pod)
                self.runners[key] = runner
                runner.thread.start()
            else:
                runner.update(pod)
        if meta.get("deletionTimestamp"):
            if runner.finished.is_set():
                self._delete_now(pod)
            else:
                runner.request_stop(float(meta.get("deletionGracePeriodSeconds", 30)))

    def _delete_now(self, pod: Json) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(KubeError):
            self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )

    def _bind(self, pod: Json) -> None:
        meta = pod["metadata"]
        why_not = fits_node(pod, self.labels)
        if why_not is not None:
            log.warning("pod %s/%s stays Pending: %s", meta["namespace"], meta["name"], why_not)
            return
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
            log.info("pod %s/%s bound to development node %s", meta["namespace"], meta["name"], self.name)
        except KubeError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s could not be bound: %s", meta["namespace"], meta["name"], e)


class DevNodeProcess:
    """The development node as a child process, as a kubelet is its own process: tests and the demo use it.

    Its log (every Pod's start, exit and probe failure) goes to ``log_file``. It is a
    :class:`~modelloop_dev.processes.ManagedProcess`, so it cannot outlive the run that started it.
    """

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        name: str = "modelloop-devnode",
        namespaces: Collection[str] = (),
        gpus: int = 1,
        log_file: Path | None = None,
    ) -> None:
        from modelloop_dev.processes import ManagedProcess

        self.kubeconfig, self.workdir, self.name = Path(kubeconfig), Path(workdir), name
        self.log_file = log_file or self.workdir / "devnode.log"
        argv = [sys.executable, "-m", "modelloop_dev.devnode", "--kubeconfig", str(self.kubeconfig)]
        argv += ["--name", name, "--workdir", str(self.workdir), "--gpus", str(gpus)]
        for ns in namespaces:
            argv += ["--namespace", ns]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = ManagedProcess(f"development node {name}", argv, self.log_file, env=env)

    def start(self, timeout_s: float = 60.0) -> DevNodeProcess:
        from modelloop_dev.processes import wait_for

        self.workdir.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.process.start()

        def ready() -> bool:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return READY_LINE.encode() in f.read()

        try:
            wait_for(ready, timeout_s, f"development node {self.name} to register and list Pods", self.process)
        except BaseException:
            self.process.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the node stops its Pods' processes first), SIGKILL if it does not exit in time."""
        self.process.stop(timeout=timeout_s)

    def __enter__(self) -> DevNodeProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelloop-devnode",
        description="Development node: stands in for a kubelet, running Pods as local processes (tests, make demo).",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG"), help="kubeconfig of the API server"
    )
    parser.add_argument("--name", default="modelloop-devnode", help="Node name (default: %(default)s)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where Pod logs and volumes go (default: a temp dir)"
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help=f"{GPU_RESOURCE} capacity to advertise (default: %(default)s)"
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="bind only unscheduled Pods of this namespace (repeatable; default: every namespace)",
    )
    args = parser.parse_args(argv)
    if args.kubeconfig is None:
        parser.error("--kubeconfig (or KUBECONFIG) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devnode %(levelname)s %(message)s")
    # A kubeconfig that skips TLS verification says so itself; one warning per request adds nothing.
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    node = DevNode(args.kubeconfig, name=args.name, workdir=args.workdir, gpus=args.gpus, namespaces=args.namespaces)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    node.start()
    node.ready.wait()
    print(f"{READY_LINE} {node.name}; pod logs under {node.workdir}", flush=True)
    stopped.wait()
    log.info("development node %s stopping: terminating its Pods' processes", node.name)
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
