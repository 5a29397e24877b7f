"""A real single-node Kubernetes cluster on this machine, without Docker: ``make cluster`` and the e2e tier.

The control plane of ``controlplane.py`` plus the node a user's cluster has: kube-scheduler, a
kubelet driving containerd + runc, the CNI bridge, kube-proxy in iptables mode and CoreDNS as a Pod
behind the ``kube-dns`` Service. Every binary comes from ``hack/tools.sh`` (Go modules) or Debian
(containerd, runc, CNI plugins); the pause, CoreDNS and MinIO images are written by ``ociimage.py``
and the product images come from ``hack/images.sh``.

One node per machine: the bridge, the kubelet's ports and the runtime directories are fixed, so
``start()`` first removes whatever an earlier run left (processes, containers, mounts, bridge,
iptables chains) and ``stop()`` removes it again; a run that was SIGKILLed is cleaned by the next
start or by ``make cluster-down``. Images stay in containerd's content store under
``~/.cache/modelloop/node`` between runs so that a warm start imports nothing.

Settings this machine needs and a user's node would not: the host boots cgroup v1 (hybrid), so the
kubelet runs with ``failCgroupV1: false``, the cgroupfs driver and no QoS cgroups; the sandbox lacks
CAP_SYS_RESOURCE, so containerd runs with ``restrict_oom_score_adj``. Forwarded traffic from the pod
bridge to any other interface is dropped: Pods talk to each other, to the API server and to the
host, never to another network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import yaml

from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.ociimage import BinaryImage, write_archive
from modelloop_dev.processes import ManagedProcess, ProcessFailed, wait_for

NODE_NAME = "modelloop-node"
BRIDGE = "mlbr0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.0.0.0/24"  # the control plane's --service-cluster-ip-range
DNS_IP = "10.0.0.10"
FORWARD_CHAIN = "MODELLOOP-FORWARD"
NODE_DIR = Path(os.environ.get("MODELLOOP_NODE_DIR", "/var/lib/modelloop-node"))
IMAGE_STORE = Path(os.environ.get("MODELLOOP_IMAGE_STORE", Path.home() / ".cache" / "modelloop" / "node"))
PAUSE_IMAGE = "localhost/modelloop/pause:dev"
COREDNS_IMAGE = "localhost/modelloop/coredns:dev"
# The name examples/minio.yaml pulls on a user's cluster; here the same name holds MinIO built from
# the module pinned in hack/versions.env, so the README's steps run unchanged.
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"
CRI_NAMESPACE = "k8s.io"


def _run(*argv: str | os.PathLike[str], check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ProcessFailed(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def preflight() -> list[str]:
    """What this machine lacks to run the node, each with the fix; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the node needs root (containerd, runc, the bridge and iptables)")
    for tool, package in (
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("iptables", "iptables"),
        ("ip", "iproute2"),
        ("conntrack", "conntrack"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing: apt-get install {package}")
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("the CNI plugins are missing: apt-get install containernetworking-plugins")
    return problems


class Cluster:
    """The control plane plus one real node; a context manager that always tears everything down."""

    def __init__(self, bin_dir: Path, workdir: Path, start_timeout: float = 180.0) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.control_plane = ControlPlane(bin_dir, self.workdir / "controlplane", advertise_address=NODE_IP)
        self.containerd_root = IMAGE_STORE / "containerd"
        self.state = NODE_DIR / "containerd"
        self.socket = self.state / "containerd.sock"
        self.kubelet_root = NODE_DIR / "kubelet"
        self.cni_conf = NODE_DIR / "cni" / "net.d"
        self.processes: dict[str, ManagedProcess] = {}
        self.timings: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Cluster:
        problems = preflight()
        if problems:
            raise ProcessFailed("cannot start the development cluster:\n  " + "\n  ".join(problems))
        t0 = time.monotonic()
        try:
            reset_node()
            self._network()
            self.control_plane.start()
            self.timings["control plane"] = time.monotonic() - t0
            self._containerd()
            self._images()
            self._node_processes()
            self._coredns()
        except BaseException:
            self.stop()
            raise
        self.timings["cluster"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for name in ("kube-proxy", "kubelet", "kube-scheduler"):
            p = self.processes.get(name)
            if p is not None:
                p.stop(timeout=10)
        self._remove_pods()
        p = self.processes.get("containerd")
        if p is not None:
            p.stop(timeout=10)
        self.control_plane.stop()
        reset_node(self.bin_dir)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- pieces ----------------------------------------------------------------------------------
    def _network(self) -> None:
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1")):
            _run("sysctl", "-qw", f"{key}={value}")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Service IPs that kube-proxy has not programmed yet go to the bridge, never to the default route.
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        _run("iptables", "-w", "-N", FORWARD_CHAIN)
        _run("iptables", "-w", "-A", FORWARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        _run("iptables", "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "0.4.0",
            "name": "modelloop",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP, "rangeStart": "10.244.0.10"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(NODE_DIR / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf / "10-modelloop.conflist").write_text(json.dumps(conf, indent=2))

    def _containerd(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        config = NODE_DIR / "containerd.toml"  # under NODE_DIR: reset_node() finds the process by it
        config.write_text(
            f"""version = 2
root = "{self.containerd_root}"
state = "{self.state}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.state / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.cni_conf}"
"""
        )
        p = self._process("containerd", ["containerd", f"--config={config}"])
        wait_for(lambda: self.ctr("version", check=False).returncode == 0, 60, "containerd to answer", p)
        # Containers of an earlier run are dead (their tasks went with its state directory).
        for cid in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("containers", "rm", cid, check=False)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        return _run(
            "ctr", f"--address={self.socket}", f"--namespace={CRI_NAMESPACE}", *args, check=check, timeout=timeout
        )

    def images(self) -> set[str]:
        """The names of the images containerd holds for the kubelet."""
        return set(self.ctr("images", "ls", "-q").stdout.split())

    def import_binary_image(self, image: BinaryImage) -> None:
        """Imports ``image`` unless containerd already holds exactly it (same binary and config)."""
        stamp = self.containerd_root.parent / "imports" / (image.name.replace("/", "_") + ".digest")
        digest = image.digest_source()
        have = image.name in self.images()
        if have and stamp.exists() and stamp.read_text() == digest:
            return
        archive = write_archive(image, self.workdir / "images" / (image.name.rsplit("/", 1)[-1] + ".tar"))
        self.ctr("images", "import", str(archive))
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        archive.unlink()

    def _images(self) -> None:
        t0 = time.monotonic()
        for image in (
            BinaryImage(PAUSE_IMAGE, self.bin_dir / "pause", "/pause"),
            BinaryImage(COREDNS_IMAGE, self.bin_dir / "coredns", "/coredns"),
            BinaryImage(MINIO_IMAGE, self.bin_dir / "minio", "/usr/bin/minio"),
        ):
            self.import_binary_image(image)
        self.timings["node images"] = time.monotonic() - t0

    def _node_processes(self) -> None:
        cp = self.control_plane
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        (NODE_DIR / "pod-logs").mkdir(parents=True, exist_ok=True)
        scheduler_kc = cp.client_kubeconfig("scheduler", "system:kube-scheduler")
        self._process(
            "kube-scheduler",
            [
                self.bin_dir / "kube-scheduler",
                f"--kubeconfig={scheduler_kc}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )
        kubelet_kc = cp.client_kubeconfig("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [DNS_IP],
            "clusterDomain": "cluster.local",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(cp.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "podCIDR": POD_CIDR,
            "podLogsDir": str(NODE_DIR / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "failSwapOn": False,
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # Eviction on this shared development disk only for what a Pod itself declares
            # (emptyDir sizeLimit, ephemeral-storage limits), not because the machine's disk is busy.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "evictionPressureTransitionPeriod": "10s",
            "localStorageCapacityIsolation": True,
            "housekeepingInterval": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
            "containerLogMaxSize": "20Mi",
        }
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config))
        kubelet = self._process(
            "kubelet",
            [
                self.bin_dir / "kubelet",
                f"--config={config}",
                f"--kubeconfig={kubelet_kc}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
            ],
        )
        proxy_kc = cp.client_kubeconfig("kube-proxy", "system:kube-proxy")
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(proxy_kc)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "conntrack": {"maxPerCore": 0},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        proxy_config_path = self.workdir / "kube-proxy.yaml"
        proxy_config_path.write_text(yaml.safe_dump(proxy_config))
        self._process("kube-proxy", [self.bin_dir / "kube-proxy", f"--config={proxy_config_path}"])
        t0 = time.monotonic()
        wait_for(self._node_ready, self.start_timeout, f"node {NODE_NAME} Ready", kubelet)
        self.timings["node ready"] = time.monotonic() - t0

    def _node_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _coredns(self) -> None:
        manifest = _coredns_manifest()
        self.kubectl("apply", "-f", "-", input=manifest)
        self.kubectl(
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            f"--timeout={int(self.start_timeout)}s",
            timeout=self.start_timeout + 10,
        )

    def _remove_pods(self) -> None:
        """Stops and removes every Pod sandbox and container, so that no process or mount outlives the run."""
        if not self.socket.exists():
            return
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            cols = line.split()
            if cols:
                self.ctr("tasks", "kill", "--signal=SIGKILL", cols[0], check=False)
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            cols = line.split()
            if cols:
                self.ctr("tasks", "delete", "--force", cols[0], check=False)
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", cid, check=False)

    def _process(self, name: str, argv: list[str | os.PathLike[str]]) -> ManagedProcess:
        p = ManagedProcess(name, argv, self.workdir / f"{name}.log").start()
        self.processes[name] = p
        return p

    # -- use ------------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, check=check, input=input, timeout=timeout)

    def logs(self) -> dict[str, Path]:
        return {**self.control_plane.logs(), **{n: p.log_path for n, p in self.processes.items()}}


def _coredns_manifest() -> str:
    corefile = """.:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
"""
    labels = {"k8s-app": "kube-dns"}
    docs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                        "containers": [
                            {
                                "name": "coredns",
                                "image": COREDNS_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
                                ],
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                                "resources": {
                                    "limits": {"memory": "128Mi"},
                                    "requests": {"cpu": "50m", "memory": "32Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _pids_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def _mounts_under(*roots: Path) -> list[str]:
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(r) or point.startswith(str(r) + "/") for r in roots):
                found.append(point)
    return found


def reset_node(bin_dir: Path | None = None) -> None:
    """Removes every trace of a node on this machine: processes, containers, mounts, bridge, rules.

    Safe to call when nothing is there. Runs at every start (a SIGKILLed run leaves its pods
    running: their shims are reparented to init), at every stop, and from ``make cluster-down``.
    """
    runc_root = NODE_DIR / "containerd" / "runc" / CRI_NAMESPACE
    if runc_root.exists():
        ids = _run("runc", f"--root={runc_root}", "list", "-q", check=False).stdout.split()
        for cid in ids:
            _run("runc", f"--root={runc_root}", "delete", "--force", cid, check=False)
    for pid in _pids_mentioning(str(NODE_DIR)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in sorted(set(_mounts_under(NODE_DIR, IMAGE_STORE)), key=len, reverse=True):
        _run("umount", "-l", point, check=False)
    if bin_dir is not None and (bin_dir / "kube-proxy").exists():
        _run(bin_dir / "kube-proxy", "--cleanup", check=False)
    _drop_rules()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
    for sub in ("containerd", "kubelet", "cni", "pod-logs"):
        shutil.rmtree(NODE_DIR / sub, ignore_errors=True)


def _drop_rules() -> None:
    """Deletes the chains kube-proxy, the CNI plugins and this module made; other rules are kept."""
    for table in ("filter", "nat", "mangle"):
        dump = _run("iptables-save", "-t", table, check=False).stdout
        if not any(tag in dump for tag in ("KUBE-", "CNI-", FORWARD_CHAIN)):
            continue
        kept = [line for line in dump.splitlines() if not any(tag in line for tag in ("KUBE-", "CNI-", FORWARD_CHAIN))]
        subprocess.run(["iptables-restore", "-w"], input="\n".join(kept) + "\n", text=True, check=False)


def main(argv: list[str] | None = None) -> int:
    """``make cluster`` (start, print how to use it, keep it up until Ctrl-C) and ``make cluster-down``."""
    import argparse
    import tempfile

    from modelloop_dev.processes import locate_tools

    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="python -m modelloop_dev.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("verb", choices=["up", "down"], nargs="?", default="up")
    p.add_argument("--images", action="store_true", help="also build the product images and load them (make images)")
    p.add_argument("--workdir", type=Path, default=None, help="logs and configuration (default: a new temp dir)")
    args = p.parse_args(argv)
    bin_dir = locate_tools(repo)
    if args.verb == "down":
        reset_node(bin_dir)
        print("node removed: processes, containers, mounts, bridge and iptables chains")
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelloop-cluster-"))
    with Cluster(bin_dir, workdir) as cluster:
        if args.images:
            load_product_images(repo, cluster)
        print(f"cluster up in {cluster.timings['cluster']:.1f}s ({_fmt_timings(cluster.timings)})")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  export PATH={bin_dir}:$PATH")
        print("  kubectl get nodes,pods -A")
        print(f"  logs: {workdir}/*.log")
        print("Ctrl-C stops it and removes everything (make cluster-down cleans up after a killed run).")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("stopping the cluster")
    return 0


def load_product_images(repo: Path, cluster: Cluster) -> float:
    """Builds the operator, trainer and server images (cached by content) and imports them into the node."""
    t0 = time.monotonic()
    env = {**os.environ, "MODELLOOP_CONTAINERD_ADDRESS": str(cluster.socket)}
    done = subprocess.run(["bash", str(repo / "hack" / "images.sh")], env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise ProcessFailed(f"hack/images.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    elapsed = time.monotonic() - t0
    cluster.timings["product images"] = elapsed
    return elapsed


def _fmt_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "cluster")


if __name__ == "__main__":
    raise SystemExit(main())
