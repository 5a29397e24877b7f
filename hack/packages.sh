#!/usr/bin/env bash
# Installs the Debian packages the tests, the single-node cluster and the image builds use, when
# missing: the Prometheus server and promtool (package prometheus; the server evaluates the alerts
# in tests/integration/test_alerts_live.py), lua5.1, containerd + runc + the CNI plugins + iptables + conntrack
# (dev/modelloop_dev/cluster.py), buildah + mmdebstrap (hack/images.sh), redis-server (Argo CD's
# cache, dev/modelloop_dev/argocd.py). Needs root or sudo.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
{ have promtool && have prometheus; } || need+=(prometheus)
have lua5.1 || need+=(lua5.1)
have containerd || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
have iptables || need+=(iptables)
have conntrack || need+=(conntrack)
have buildah || need+=(buildah)
have mmdebstrap || need+=(mmdebstrap)
{ have redis-server && have redis-cli; } || need+=(redis-server)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
have make || need+=(make)
[ ${#need[@]} = 0 ] && exit 0
echo "[packages] installing from Debian: ${need[*]}" >&2
sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
