"""The Argo CD health checks shipped in the chart, run in a real Lua 5.1 on objects in every state.

Argo CD evaluates these scripts with gopher-lua (Lua 5.1 semantics) and an ``obj`` global holding
the resource; the harness below does the same with the reference interpreter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HEALTH = Path(__file__).resolve().parents[2] / "charts/modelloop/files/health"


def lua_literal(value: Any) -> str:
    """JSON value -> Lua literal: objects become tables keyed by strings, arrays 1-based lists."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid Lua string literal once \u escapes are gone.
        return json.dumps(value, ensure_ascii=False).replace("\\u", "\\\\u")
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def run_health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.1")
    if lua is None:
        pytest.fail("lua5.1 is not on PATH (Debian package lua5.1)")
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local check = assert(loadfile({json.dumps(str(HEALTH / script))}))\n"
        "local hs = check()\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    result = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def policy(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelloop.dev/v1alpha1",
        "kind": "RetrainPolicy",
        "metadata": {"name": "digits", "namespace": "ml", "generation": 2},
        "spec": {"model": "digits", **(spec or {})},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


DESIRED = {"version": "v3", "artifactURI": "s3://b/digits/v3/", "manifestDigest": "sha256:" + "a" * 64}

POLICY_CASES = [
    ("no status yet", policy(), "Progressing", "Waiting for the operator to observe the policy"),
    (
        "old generation observed",
        policy(status={"observedGeneration": 1, "activeVersion": "v2"}),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "training the first version",
        policy(
            status={
                "observedGeneration": 2,
                "trainingVersion": "v1",
                "conditions": [cond("Ready", "False", "NoActiveVersion", "no version has been promoted yet")],
            }
        ),
        "Progressing",
        "Training the first version v1",
    ),
    (
        "rollout in progress",
        policy(
            status={
                "observedGeneration": 2,
                "activeVersion": "v2",
                "desired": DESIRED,
                "rollout": {"updated": 1, "total": 3},
                "conditions": [cond("Ready", "True", "RollingOut")],
            }
        ),
        "Progressing",
        "Rolling out v3: 1/3 replicas",
    ),
    (
        "rollout complete",
        policy(
            status={
                "observedGeneration": 2,
                "activeVersion": "v3",
                "desired": DESIRED,
                "rollout": {"updated": 3, "total": 3},
                "conditions": [cond("Ready", "True", "Serving", "serving v3")],
            }
        ),
        "Healthy",
        "Serving v3",
    ),
    (
        "serving while the next version trains",
        policy(status={"observedGeneration": 2, "activeVersion": "v3", "trainingVersion": "v4"}),
        "Healthy",
        "Serving v3; training v4",
    ),
    (
        "rollout stalled",
        policy(
            status={
                "observedGeneration": 2,
                "activeVersion": "v2",
                "desired": DESIRED,
                "rollout": {"updated": 1, "total": 3},
                "conditions": [
                    cond("Ready", "True", "RollingOut"),
                    cond("RolloutComplete", "False", "RolloutStalled", "1/3 replicas serve v3 after 10m"),
                ],
            }
        ),
        "Degraded",
        "1/3 replicas serve v3 after 10m",
    ),
    (
        "invalid spec",
        policy(
            status={
                "observedGeneration": 2,
                "conditions": [cond("Ready", "False", "InvalidSpec", "schedule: not a cron expression")],
            }
        ),
        "Degraded",
        "schedule: not a cron expression",
    ),
    (
        "suspended",
        policy(spec={"suspend": True}, status={"observedGeneration": 2, "activeVersion": "v3"}),
        "Suspended",
        "spec.suspend is true: no new trainings start",
    ),
]


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_retrainpolicy_health(obj: dict[str, Any], status: str, message: str) -> None:
    assert run_health("retrainpolicy.lua", obj) == (status, message)


def version(phase: str | None, message: str = "") -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "d-v3"}}
    if phase is not None:
        obj["status"] = {"phase": phase, "message": message}
    return obj


VERSION_CASES = [
    ("no status yet", version(None), "Progressing", "Waiting for the operator"),
    ("pending", version("Pending"), "Progressing", "Pending"),
    ("training", version("Training", "epoch 3/20"), "Progressing", "epoch 3/20"),
    ("verifying", version("Verifying"), "Progressing", "Verifying"),
    ("verified", version("Verified"), "Progressing", "Verified"),
    ("promoting", version("Promoting", "2/3 replicas"), "Progressing", "2/3 replicas"),
    ("active", version("Active", "serving"), "Healthy", "serving"),
    ("superseded", version("Superseded"), "Healthy", "Superseded"),
    ("rolled back", version("RolledBack"), "Healthy", "RolledBack"),
    ("rejected", version("Rejected", "holdoutAccuracy 0.84 < 0.88"), "Healthy", "holdoutAccuracy 0.84 < 0.88"),
    ("failed", version("Failed", "CUDA out of memory"), "Degraded", "CUDA out of memory"),
    ("unknown phase", version("Exploded"), "Unknown", "Unknown phase Exploded"),
]


@pytest.mark.parametrize(
    ("obj", "status", "message"), [c[1:] for c in VERSION_CASES], ids=[c[0] for c in VERSION_CASES]
)
def test_modelversion_health(obj: dict[str, Any], status: str, message: str) -> None:
    assert run_health("modelversion.lua", obj) == (status, message)


def test_every_phase_is_covered() -> None:
    from modelloop.api.modelversion import Phase

    covered = {c[1]["status"]["phase"] for c in VERSION_CASES if "status" in c[1]}
    assert {p.value for p in Phase} <= covered


def test_lua_literal_round_trips_awkward_strings() -> None:
    text = 'quote " backslash \\ newline \n unicode é ]]'
    awkward: dict[str, Any] = {"m": text, "n": [1, 2.5, True], "z": None}
    program = f'local o = {lua_literal(awkward)}\nio.write(o.m, "|", #o.n, "|", tostring(o.n[3]), "|", tostring(o.z))'
    result = subprocess.run(["lua5.1", "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "|3|true|nil"


@pytest.mark.parametrize(
    ("kind", "script"), [("RetrainPolicy", "retrainpolicy.lua"), ("ModelVersion", "modelversion.lua")]
)
def test_docs_ship_the_tested_scripts(kind: str, script: str) -> None:
    doc = (HEALTH.parents[3] / "docs/argocd.md").read_text().splitlines()
    start = doc.index(f"  resource.customizations.health.modelloop.dev_{kind}: |") + 1
    block = []
    for line in doc[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line.removeprefix("    "))
    assert "\n".join(block).strip() == (HEALTH / script).read_text().strip(), (
        f"docs/argocd.md carries a different {script}: paste charts/modelloop/files/health/{script} again"
    )
