"""The quickstart's object store over TLS, checked in the files a user applies (README + examples/).

The cluster tier proves it on a real node; these checks say in a second which file broke the chain
when one does: MinIO serves the README's certificate, every client of it turns TLS on and mounts
the CA bundle the policy names, and the demo (plain-HTTP MinIO) takes the bundle out again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from modelloop.api import constants as c
from modelloop.api.retrainpolicy import RetrainPolicySpec
from modelloop_dev.demo import SERVING_EXAMPLE, without_storage_ca

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def install_block() -> str:
    found = re.search(r"<!-- install:begin[^>]*-->\s*```console\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert found
    return found.group(1)


def policy_ca() -> tuple[str, str]:
    (policy,) = docs("retrainpolicy-digits.yaml")
    spec = RetrainPolicySpec.model_validate(policy["spec"])
    bundle = spec.storage.ca_bundle
    assert bundle is not None, "the example policy does not verify its store with a CA bundle"
    return bundle.config_map, bundle.key


def test_the_readme_makes_the_certificate_and_the_bundle_the_examples_use() -> None:
    config_map, key = policy_ca()
    block = install_block()
    assert f"create configmap {config_map} --from-file={key}=" in block
    assert "create secret tls minio-tls " in block
    sans = re.search(r"subjectAltName=(\S+)", block)
    assert sans and "DNS:minio.digits.svc" in sans.group(1).split(","), "the certificate does not name the endpoint"
    (policy,) = docs("retrainpolicy-digits.yaml")
    assert policy["spec"]["storage"]["endpoint"].split(":")[0] == "minio.digits.svc"
    # The CA is made, used, and its key removed before MinIO is applied.
    assert block.index("openssl req") < block.index("create configmap") < block.index("examples/minio.yaml")
    assert 'rm -r "$TLS_DIR"' in block


def test_minio_serves_https_only_with_the_readme_certificate() -> None:
    config_map, key = policy_ca()
    (deployment,) = [d for d in docs("minio.yaml") if d["kind"] == "Deployment"]
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    args = container["args"]
    certs_dir = args[args.index("--certs-dir") + 1]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == certs_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    files = {
        item["path"]: (kind, src[kind]["name"], item["key"])
        for src in volume["projected"]["sources"]
        for kind in ("secret", "configMap")
        if kind in src
        for item in src[kind]["items"]
    }
    assert files["public.crt"] == ("secret", "minio-tls", "tls.crt")
    assert files["private.key"] == ("secret", "minio-tls", "tls.key")
    assert files["CAs/ca.crt"] == ("configMap", config_map, key)


def test_every_client_in_the_examples_speaks_tls_verified_by_the_policys_bundle() -> None:
    config_map, key = policy_ca()
    pods = [pod_spec(d) for d in docs("seed-dataset.yaml") if d["kind"] == "Job"]
    pods += [pod_spec(d) for d in docs("serving-deployment.yaml") if d["kind"] == "Deployment"]
    clients = 0
    for pod in pods:
        bundles = {
            v["name"]: v["configMap"]
            for v in pod["volumes"]
            if (v.get("configMap") or {}).get("name") == config_map and not v["configMap"].get("optional")
        }
        for container in pod["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            if c.ENV_S3_ENDPOINT not in env:
                continue
            clients += 1
            assert env[c.ENV_S3_SECURE] == "true", container["name"]
            mount = next(m for m in container["volumeMounts"] if m["name"] in bundles)
            items = {i["path"]: i["key"] for i in bundles[mount["name"]]["items"]}
            ca_file = Path(env[c.ENV_S3_CA_FILE])
            assert ca_file.parent == Path(mount["mountPath"]) and items[ca_file.name] == key, container["name"]
    assert clients == 3, "the seed Job, the server and the sidecar"


def test_the_demo_takes_the_bundle_out_for_its_plain_http_minio() -> None:
    (deployment,) = [d for d in yaml.safe_load_all(SERVING_EXAMPLE.read_text()) if d and d["kind"] == "Deployment"]
    pod = without_storage_ca(pod_spec(deployment))
    assert all(v["name"] != "storage-ca" for v in pod["volumes"])
    for container in pod["containers"]:
        assert c.ENV_S3_CA_FILE not in {e["name"] for e in container["env"]}
        assert all(m["name"] != "storage-ca" for m in container["volumeMounts"])
    assert any(v["name"] == "models" for v in pod["volumes"]), "only the bundle goes"
