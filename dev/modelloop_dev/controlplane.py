"""A real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The envtest recipe, plus the controller manager so that Jobs get Pods, namespaces are finalised
and garbage collection runs. On its own (the integration tier) it listens on loopback and has no
scheduler and no kubelet; ``cluster.py`` adds a real node to it, and then the API server is also
advertised on the node's bridge address so that Pods reach it through the ``kubernetes`` Service.
Authentication is by client certificates from a CA made for this run and authorisation is RBAC, so
the operator's ServiceAccount permissions are exercised as in a cluster.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml
from cryptography.hazmat.primitives import serialization

from modelloop_dev.pki import cert as _cert
from modelloop_dev.pki import key as _key
from modelloop_dev.pki import name as _name
from modelloop_dev.pki import pem_key as _pem_key
from modelloop_dev.processes import ManagedProcess, free_port, http_get, wait_for

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# Without a cloud and without kubelets these controllers either fail or evict the development
# node's Pods (it does not post the heartbeats node-lifecycle expects). With a real kubelet
# (``advertise_address`` set) node lifecycle runs as in any cluster: it lifts the not-ready taint
# a kubelet registers with. Pod CIDRs come from the kubelet's configuration, never from node-ipam.
DISABLED_CONTROLLERS = ("node-ipam-controller", "node-lifecycle-controller", "taint-eviction-controller")
DISABLED_WITH_A_NODE = ("node-ipam-controller",)


class KubectlFailed(subprocess.CalledProcessError):
    """A kubectl call failed; the message carries kubectl's own explanation."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[2:])} failed with status {self.returncode}: {(self.stderr or '').strip()}"


class _Pki:
    """The run's CA, the API server's serving certificate, client certificates, the SA signing key."""

    def __init__(self, d: Path, extra_ips: tuple[str, ...] = ()) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        ca_key = _key()
        ca_name = _name("modelloop-dev-ca")
        ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.ca_crt = self._write("ca.crt", self.ca_pem)
        self.ca_key = self._write("ca.key", _pem_key(ca_key))

        srv_key = _key()
        srv = _cert(
            _name("kube-apiserver"),
            srv_key,
            ca_name,
            ca_key,
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=("127.0.0.1", "10.0.0.1", *extra_ips),
        )
        self.serving_crt = self._write("apiserver.crt", srv.public_bytes(serialization.Encoding.PEM))
        self.serving_key = self._write("apiserver.key", _pem_key(srv_key))

        sa_key = _key()
        self.sa_key = self._write("sa.key", _pem_key(sa_key))
        self.sa_pub = self._write(
            "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self._ca_key_obj, self._ca_name = ca_key, ca_name

    def client(self, cn: str, org: str | None) -> tuple[bytes, bytes]:
        key = _key()
        crt = _cert(_name(cn, org), key, self._ca_name, self._ca_key_obj, client=True)
        return crt.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def _write(self, name: str, data: bytes) -> Path:
        p = self.dir / name
        p.write_bytes(data)
        p.chmod(0o600)
        return p


def _kubeconfig(path: Path, server: str, ca_pem: bytes, crt: bytes, key: bytes, user: str) -> Path:
    import base64

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "modelloop-dev", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "modelloop-dev", "context": {"cluster": "modelloop-dev", "user": user}}],
        "current-context": "modelloop-dev",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as child processes of this run.

    Everything lives under ``workdir`` (certificates, etcd data, logs ``*.log``, ``kubeconfig``);
    a failure names the log to read. ``start()`` returns when the API server is ready and the
    controller manager has created the ``default`` ServiceAccount (proof that it reconciles).
    """

    def __init__(
        self, bin_dir: Path, workdir: Path, start_timeout: float = 120.0, advertise_address: str | None = None
    ) -> None:
        self.bin_dir = bin_dir
        self.advertise_address = advertise_address
        self.workdir = workdir.resolve()
        self.start_timeout = start_timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.env: dict[str, str] = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.started_in: float | None = None
        self._pki: _Pki | None = None
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.controller_manager: ManagedProcess | None = None

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _start(self) -> None:
        extra_ips = (self.advertise_address,) if self.advertise_address else ()
        pki = self._pki = _Pki(self.workdir / "pki", extra_ips)
        crt, key = pki.client("modelloop-admin", "system:masters")
        _kubeconfig(self.kubeconfig, self.server, pki.ca_pem, crt, key, "admin")
        self._admin_crt = pki._write("admin.crt", crt)
        self._admin_key = pki._write("admin.key", key)
        # the controller manager runs every controller under its own identity
        # (--use-service-account-credentials=false), so it needs more than its default role
        kcm_crt, kcm_key = pki.client("system:kube-controller-manager", "system:masters")
        kcm_kubeconfig = _kubeconfig(
            self.workdir / "controller-manager.kubeconfig", self.server, pki.ca_pem, kcm_crt, kcm_key, "kcm"
        )
        kubelet_client_crt, kubelet_client_key = pki.client("kube-apiserver-kubelet-client", "system:masters")
        kubelet_client = (
            pki._write("kubelet-client.crt", kubelet_client_crt),
            pki._write("kubelet-client.key", kubelet_client_key),
        )
        if self.advertise_address:
            # Pods reach the API server through the `kubernetes` Service, whose endpoint is this address.
            listen = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.advertise_address}",
                "--kubelet-preferred-address-types=InternalIP",  # the node's name is not in any DNS
            ]
        else:
            listen = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]

        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = ManagedProcess(
            "etcd",
            [
                self.bin_dir / "etcd",
                "--name=dev",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dev={peer_url}",
                "--unsafe-no-fsync=true",  # a throw-away store; fsync only slows tests on a busy disk
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        ).start()

        self.apiserver = ManagedProcess(
            "kube-apiserver",
            [
                self.bin_dir / "kube-apiserver",
                f"--etcd-servers={etcd_url}",
                *listen,
                f"--secure-port={self.port}",
                f"--tls-cert-file={pki.serving_crt}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_crt}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-account-issuer={ISSUER}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
            ],
            self.workdir / "kube-apiserver.log",
        )
        wait_for(self._etcd_healthy, self.start_timeout, f"etcd healthy on {etcd_url}", self.etcd)
        self._start_apiserver()

        self.controller_manager = ManagedProcess(
            "kube-controller-manager",
            [
                self.bin_dir / "kube-controller-manager",
                f"--kubeconfig={kcm_kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",  # no health endpoint needed, and no clash between parallel runs
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                "--use-service-account-credentials=false",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--controllers=*,"
                + ",".join(f"-{c}" for c in (DISABLED_WITH_A_NODE if self.advertise_address else DISABLED_CONTROLLERS)),
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
            self.workdir / "kube-controller-manager.log",
        ).start()
        wait_for(
            self._default_service_account_exists,
            self.start_timeout,
            "the controller manager to create ServiceAccount default/default",
            self.controller_manager,
        )

    def _start_apiserver(self) -> None:
        assert self.apiserver is not None
        self.apiserver.start()
        wait_for(
            lambda: self._get("/readyz") == b"ok",
            self.start_timeout,
            f"kube-apiserver /readyz at {self.server}",
            self.apiserver,
        )

    def client_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        """A kubeconfig at ``workdir/<name>.kubeconfig`` for ``user`` (in ``group``), signed by the run's CA."""
        if self._pki is None:
            raise RuntimeError("the control plane is not started")
        crt, key = self._pki.client(user, group)
        return _kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, self._pki.ca_pem, crt, key, name)

    @property
    def ca_file(self) -> Path:
        if self._pki is None:
            raise RuntimeError("the control plane is not started")
        return self._pki.ca_crt

    def restart_apiserver(self) -> None:
        """Stops and starts kube-apiserver on the same port, certificates and etcd: an API outage."""
        if self.apiserver is None:
            raise RuntimeError("the control plane is not started")
        # it drains its watches for a long time on SIGTERM; an outage does not need the courtesy
        self.apiserver.stop(timeout=3.0)
        self._start_apiserver()

    def stop(self) -> None:
        for p in (self.controller_manager, self.apiserver, self.etcd):
            if p is not None:
                p.stop()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _ssl(self) -> ssl.SSLContext:
        assert self._pki is not None
        ctx = ssl.create_default_context(cafile=str(self._pki.ca_crt))
        ctx.load_cert_chain(str(self._admin_crt), str(self._admin_key))
        return ctx

    def _get(self, path: str) -> bytes:
        return http_get(self.server + path, self._ssl())

    def _etcd_healthy(self) -> bool:
        return bool(json.loads(http_get(f"http://127.0.0.1:{self.etcd_port}/health")).get("health") == "true")

    def _default_service_account_exists(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0

    def api_client(self) -> ApiClient:
        """A client of the official library with the admin credentials (close it when done)."""
        from kubernetes import config

        client: ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return client

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the cluster admin; with ``check`` a failure raises with kubectl's own stderr."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise KubectlFailed(done.returncode, argv, done.stdout, done.stderr)
        return done

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in (self.etcd, self.apiserver, self.controller_manager) if p is not None}

    def describe(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "logs": {k: str(v) for k, v in self.logs().items()},
        }


def apply_crds(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], files: Sequence[Path], timeout: float = 120.0
) -> None:
    """Server-side applies the CRDs in ``files`` and waits until every one is Established.

    Server-side: some CRDs (Kueue's Workload) are larger than client-side apply's annotation allows.
    Not ``kubectl wait --for=condition=Established``: it fails at once on a CRD whose status has no
    conditions yet, which is what a CRD looks like for a moment after it is created.
    """
    args = [a for f in files for a in ("-f", str(f))]
    kubectl("apply", "--server-side", "--field-manager=modelloop-tests", *args, timeout=300)

    def established() -> bool:
        listed = json.loads(kubectl("get", *args, "-o", "json").stdout)
        return all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (i.get("status") or {}).get("conditions") or []
            )
            for i in listed.get("items", [listed])
        )

    wait_for(established, timeout, f"the CRDs of {', '.join(f.name for f in files)} to be established")
