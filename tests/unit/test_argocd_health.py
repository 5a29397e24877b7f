"""The Argo CD health checks and resource actions shipped in the chart, run in a real Lua 5.1.

They are laid out as argo-cd's ``resource_customizations/<group>/<Kind>/`` expects (health.lua,
health_test.yaml, testdata/, actions/discovery.lua, actions/<name>/action.lua, action_test.yaml),
so the directory can be proposed upstream as it is. This harness reads the same test files:
Argo CD evaluates the scripts with gopher-lua (Lua 5.1 semantics) and an ``obj`` global holding
the resource; here the reference interpreter does, with the result read back as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelloop_dev.argocd import doc_yaml

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "charts/modelloop/files/resource_customizations"
GROUP = CUSTOMIZATIONS / "modelloop.dev"
ARGOCD_DOC = ROOT / "docs/argocd.md"
# The clock the retrain-now action reads, fixed (argo-cd's own test normalises such timestamps).
FIXED_CLOCK = 1767323045  # 2026-01-02T03:04:05Z


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


# A Lua table -> JSON encoder for the harness: a table with keys 1..n is an array, any other an
# object; an empty table is written as {} (the comparison below treats [] and {} alike, as
# gopher-lua's conversion cannot tell them apart either).
LUA_JSON = r"""
local function encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  end
  if t == "table" then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n > 0 and n == #v then
      local parts = {}
      for i = 1, n do parts[i] = encode(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = encode(tostring(k)) .. ":" .. encode(x) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot encode a " .. t)
end
"""


def run_lua(script: Path, obj: dict[str, Any]) -> Any:
    """Run one customization script on ``obj`` as Argo CD does; its return value, as JSON."""
    lua = shutil.which("lua5.1")
    if lua is None:
        pytest.fail("lua5.1 is not on PATH (Debian package lua5.1)")
    program = (
        LUA_JSON
        + "local real_os = os\n"
        + f"package.loaded.os = setmetatable({{date = function(f) return real_os.date(f, {FIXED_CLOCK}) end}},"
        + " {__index = real_os})\n"
        + f"obj = {lua_literal(obj)}\n"
        + f"local script = assert(loadfile({json.dumps(str(script))}))\n"
        + "io.write(encode(script()))\n"
    )
    result = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def normalised(value: Any) -> Any:
    """Empty lists and maps alike, as after a round trip through Lua."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()} if value else {}
    if isinstance(value, list):
        return [normalised(v) for v in value] if value else {}
    return value


KINDS = sorted(p.name for p in GROUP.iterdir() if p.is_dir())


def health_cases() -> list[Any]:
    cases = []
    for kind in KINDS:
        for case in load(GROUP / kind / "health_test.yaml")["tests"]:
            cases.append(pytest.param(kind, case, id=f"{kind}/{Path(case['inputPath']).stem}"))
    return cases


@pytest.mark.parametrize(("kind", "case"), health_cases())
def test_health(kind: str, case: dict[str, Any]) -> None:
    obj = load(GROUP / kind / case["inputPath"])
    assert obj["kind"] == kind
    hs = run_lua(GROUP / kind / "health.lua", obj)
    assert {"status": hs["status"], "message": hs.get("message", "")} == case["healthStatus"]


def test_both_kinds_and_every_testdata_file_are_used() -> None:
    assert KINDS == ["ModelVersion", "RetrainPolicy"]
    for kind in KINDS:
        used = {c["inputPath"] for c in load(GROUP / kind / "health_test.yaml")["tests"]}
        actions = GROUP / kind / "actions/action_test.yaml"
        if actions.exists():
            spec = load(actions)
            used |= {f"actions/{c['inputPath']}" for c in spec["discoveryTests"] + spec["actionTests"]}
            used |= {f"actions/{c['expectedOutputPath']}" for c in spec["actionTests"]}
        present = {str(p.relative_to(GROUP / kind)) for p in (GROUP / kind).rglob("testdata/*.yaml")}
        assert present == used, f"{kind}: unused {sorted(present - used)}, missing {sorted(used - present)}"


def test_the_two_degraded_states_that_used_to_progress_forever() -> None:
    """A policy whose v1 failed, and one whose storage is unreadable, are Degraded (issue 18)."""
    statuses = {Path(c["inputPath"]).stem: c["healthStatus"]["status"] for c in health_cases_of("RetrainPolicy")}
    assert statuses["degraded_firstVersionFailed"] == "Degraded"
    assert statuses["degraded_storageUnreadable"] == "Degraded"
    assert statuses["degraded_storageUnreadableBeforeTheFirstVersion"] == "Degraded"
    assert statuses["progressing_retryingTheFirstVersion"] == "Progressing"


def health_cases_of(kind: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = load(GROUP / kind / "health_test.yaml")["tests"]
    return cases


def test_every_phase_is_covered() -> None:
    from modelloop.api.modelversion import Phase

    phases = {
        (load(GROUP / "ModelVersion" / c["inputPath"]).get("status") or {}).get("phase")
        for c in health_cases_of("ModelVersion")
    }
    assert {p.value for p in Phase} <= phases


POLICY_ACTIONS = GROUP / "RetrainPolicy/actions"


def action_spec() -> dict[str, Any]:
    spec: dict[str, Any] = load(POLICY_ACTIONS / "action_test.yaml")
    return spec


@pytest.mark.parametrize(
    "case", action_spec()["discoveryTests"], ids=[Path(c["inputPath"]).stem for c in action_spec()["discoveryTests"]]
)
def test_action_discovery(case: dict[str, Any]) -> None:
    found = run_lua(POLICY_ACTIONS / "discovery.lua", load(POLICY_ACTIONS / case["inputPath"]))
    assert sorted(({"name": name, **props} for name, props in found.items()), key=lambda a: a["name"]) == sorted(
        case["result"], key=lambda a: a["name"]
    )


@pytest.mark.parametrize(
    "case",
    action_spec()["actionTests"],
    ids=[f"{c['action']}/{Path(c['inputPath']).stem}" for c in action_spec()["actionTests"]],
)
def test_action(case: dict[str, Any]) -> None:
    before = load(POLICY_ACTIONS / case["inputPath"])
    after = run_lua(POLICY_ACTIONS / case["action"] / "action.lua", before)
    expected = load(POLICY_ACTIONS / case["expectedOutputPath"])
    assert normalised(after) == normalised(expected)
    assert after != normalised(before), "the action changed nothing"


def test_every_action_is_discovered_and_tested() -> None:
    scripts = {p.parent.name for p in POLICY_ACTIONS.glob("*/action.lua")}
    assert scripts == {"retrain-now", "rollback", "suspend", "resume"}
    for case in action_spec()["discoveryTests"]:
        assert {a["name"] for a in case["result"]} == scripts
    assert {c["action"] for c in action_spec()["actionTests"]} == scripts


def test_actions_set_what_the_operator_reads() -> None:
    """The annotation names in the scripts are the operator's own (a rename would silently break them)."""
    from modelloop.api.constants import ANNOTATION_RETRAIN_NOW, ANNOTATION_ROLLBACK_TO, ROLLBACK_PREVIOUS

    assert f'annotations["{ANNOTATION_RETRAIN_NOW}"]' in (POLICY_ACTIONS / "retrain-now/action.lua").read_text()
    rollback = (POLICY_ACTIONS / "rollback/action.lua").read_text()
    assert f'annotations["{ANNOTATION_ROLLBACK_TO}"]' in rollback and f'"{ROLLBACK_PREVIOUS}"' in rollback


def test_rollback_without_a_previous_version_fails_clearly() -> None:
    lua = shutil.which("lua5.1")
    assert lua
    program = f"obj = {lua_literal(load(POLICY_ACTIONS / 'testdata/new.yaml'))}\ndofile({json.dumps(str(POLICY_ACTIONS / 'rollback/action.lua'))})\n"
    result = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "no previous version to roll back to" in result.stderr


def test_lua_round_trips_awkward_strings() -> None:
    text = 'quote " backslash \\ newline \n tab \t unicode é ]]'
    awkward: dict[str, Any] = {"m": text, "n": [1, 2.5, True], "z": None, "e": {}}
    lua = shutil.which("lua5.1")
    assert lua
    program = LUA_JSON + f"local o = {lua_literal(awkward)}\nio.write(encode(o))"
    result = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"m": text, "n": [1, 2.5, True], "e": {}}


def argocd_cm() -> dict[str, str]:
    """The argocd-cm data block docs/argocd.md tells people to apply."""
    data: dict[str, str] = doc_yaml(ARGOCD_DOC, "name: argocd-cm")["data"]
    return data


@pytest.mark.parametrize("kind", KINDS)
def test_docs_ship_the_tested_health_checks(kind: str) -> None:
    shipped = argocd_cm()[f"resource.customizations.health.modelloop.dev_{kind}"]
    assert shipped.strip() == (GROUP / kind / "health.lua").read_text().strip(), (
        f"docs/argocd.md carries a different health check for {kind}: paste "
        f"charts/modelloop/files/resource_customizations/modelloop.dev/{kind}/health.lua again"
    )


def test_docs_ship_the_tested_actions() -> None:
    shipped = yaml.safe_load(argocd_cm()["resource.customizations.actions.modelloop.dev_RetrainPolicy"])
    assert shipped["discovery.lua"].strip() == (POLICY_ACTIONS / "discovery.lua").read_text().strip()
    definitions = {d["name"]: d["action.lua"].strip() for d in shipped["definitions"]}
    assert definitions == {p.parent.name: p.read_text().strip() for p in POLICY_ACTIONS.glob("*/action.lua")}, (
        "docs/argocd.md carries different actions: paste resource_customizations/.../actions again"
    )
