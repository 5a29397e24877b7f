"""The memory check before a load: cgroup v1/v2 files read from fake trees, the pure headroom decision,
and the model holder refusing a version too big for the limit while the old one keeps answering."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelloop.api import constants as c
from modelloop_server.memory import (
    MemoryCheck,
    MemoryLimits,
    MiB,
    ModelTooLarge,
    estimate_need,
    headroom_decision,
    read_limits,
)
from modelloop_server.model import ModelHolder
from modelloop_server.settings import ServerSettings, SettingsError
from modelloop_server.sidecar import too_large_message
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin

GiB = 1 << 30
V1_UNLIMITED = "9223372036854771712"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


V2 = "memory.max", "memory.current", "memory.stat"
V1 = "memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat"

READ_CASES: list[tuple[str, dict[str, str], MemoryLimits | None]] = [
    (
        "v2 with a limit; inactive page cache is not counted",
        {
            V2[0]: f"{2 * GiB}\n",
            V2[1]: f"{900 * MiB}\n",
            V2[2]: f"anon 1000\nactive_file 5\ninactive_file {300 * MiB}\n",
        },
        MemoryLimits(2 * GiB, 600 * MiB, "ROOT/memory.max"),
    ),
    (
        "v2 unlimited",
        {V2[0]: "max\n", V2[1]: "12345\n"},
        MemoryLimits(None, 12345, "ROOT/memory.max"),
    ),
    (
        "v2 without memory.stat counts all usage",
        {V2[0]: "1000000\n", V2[1]: "400000\n"},
        MemoryLimits(1000000, 400000, "ROOT/memory.max"),
    ),
    (
        "v2 cache larger than usage (racy read) floors at zero",
        {V2[0]: "1000000\n", V2[1]: "400\n", V2[2]: "inactive_file 900\n"},
        MemoryLimits(1000000, 0, "ROOT/memory.max"),
    ),
    ("v2 without memory.current", {V2[0]: "1000000\n"}, None),
    ("v2 garbage limit", {V2[0]: "lots\n", V2[1]: "1\n"}, None),
    (
        "v1 with a limit; hierarchical inactive cache is not counted",
        {
            V1[0]: f"{GiB}\n",
            V1[1]: f"{700 * MiB}\n",
            V1[2]: f"cache 1\ninactive_file 7\ntotal_inactive_file {200 * MiB}\n",
        },
        MemoryLimits(GiB, 500 * MiB, "ROOT/memory/memory.limit_in_bytes"),
    ),
    (
        "v1 unlimited (the huge page-aligned value)",
        {V1[0]: V1_UNLIMITED + "\n", V1[1]: "5000\n"},
        MemoryLimits(None, 5000, "ROOT/memory/memory.limit_in_bytes"),
    ),
    (
        "v1 unlimited here but limited by a parent (hierarchical_memory_limit)",
        {V1[0]: V1_UNLIMITED, V1[1]: "5000", V1[2]: f"hierarchical_memory_limit {GiB}\n"},
        MemoryLimits(GiB, 5000, "ROOT/memory/memory.limit_in_bytes"),
    ),
    ("v1 without usage", {V1[0]: f"{GiB}\n"}, None),
    ("nothing at all (not in a container, or no memory controller)", {}, None),
    ("only unrelated controllers", {"cpu/cpu.shares": "1024\n", "pids.max": "max\n"}, None),
]


@pytest.mark.parametrize(("files", "want"), [case[1:] for case in READ_CASES], ids=[case[0] for case in READ_CASES])
def test_read_limits(tmp_path: Path, files: dict[str, str], want: MemoryLimits | None) -> None:
    root = _tree(tmp_path / "cgroup", files)
    got = read_limits(root)
    if want is not None:
        want = MemoryLimits(want.limit_bytes, want.usage_bytes, want.source.replace("ROOT", str(root)))
    assert got == want


def test_read_limits_prefers_v2_on_a_hybrid_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {V2[0]: "1000\n", V2[1]: "10\n", V1[0]: "2000\n", V1[1]: "20\n"})
    assert read_limits(root) == MemoryLimits(1000, 10, str(root / "memory.max"))


def test_read_limits_of_a_missing_root(tmp_path: Path) -> None:
    assert read_limits(tmp_path / "absent") is None


DECISIONS: list[tuple[str, int, MemoryLimits | None, bool, list[str]]] = [
    ("unreadable: not checked", 10 * GiB, None, True, ["not checked"]),
    ("unlimited", 10 * GiB, MemoryLimits(None, GiB, "/x/memory.max"), True, ["no memory limit"]),
    ("fits", 500 * MiB, MemoryLimits(2 * GiB, GiB, "/x/memory.max"), True, ["1.00 GiB of the 2.00 GiB limit is free"]),
    ("exactly fits", GiB, MemoryLimits(2 * GiB, GiB, "/x/memory.max"), True, []),
    (
        "one byte too many",
        GiB + 1,
        MemoryLimits(2 * GiB, GiB, "/x/memory.max"),
        False,
        ["only 1.00 GiB is free", "memory limit 2.00 GiB (2147483648 bytes, /x/memory.max)", "at least 2049Mi, or"],
    ),
    (
        "usage already above the limit",
        MiB,
        MemoryLimits(GiB, GiB + MiB, "/x/memory.max"),
        False,
        ["only 0.0 MiB is free", "in use 1.00 GiB"],
    ),
    (
        "refusal names the need, the limit, the usage and what to do",
        3 * GiB,
        MemoryLimits(2 * GiB, 700 * MiB, "/x/memory.max"),
        False,
        [
            "the model needs about 3.00 GiB (3221225472 bytes)",
            "in use 700.0 MiB (734003200 bytes)",
            "OOM-killed",
            "Raise the serving container's memory limit (resources.limits.memory) to at least 3772Mi",
            "or shrink the model",
        ],
    ),
]


@pytest.mark.parametrize(
    ("need", "limits", "ok", "fragments"), [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS]
)
def test_headroom_decision(need: int, limits: MemoryLimits | None, ok: bool, fragments: list[str]) -> None:
    got_ok, message = headroom_decision(need, limits)
    assert got_ok is ok, message
    for fragment in fragments:
        assert fragment in message


def test_headroom_message_names_what_and_what_is_held() -> None:
    ok, message = headroom_decision(GiB, MemoryLimits(GiB, MiB, "/x"), "v7 (weights 1 GiB)", "with v6 serving resident")
    assert not ok
    assert message.startswith("v7 (weights 1 GiB) needs about 1.00 GiB")
    assert "bytes, with v6 serving resident)" in message


def test_estimate_need() -> None:
    assert estimate_need(100 * MiB, 1.2, 64 * MiB) == 184 * MiB
    assert estimate_need(0, 1.2, 64 * MiB) == 64 * MiB


def test_memory_settings_from_env() -> None:
    base = {c.ENV_MODEL: "digits", "MODELLOOP_MODEL_DIR": "/models"}
    s = ServerSettings.from_env(base)
    assert (s.cgroup_root, s.memory_overhead_factor, s.memory_reserve_bytes) == (Path("/sys/fs/cgroup"), 1.2, 64 * MiB)
    s = ServerSettings.from_env(
        {
            **base,
            "MODELLOOP_CGROUP_ROOT": "/fake",
            "MODELLOOP_MEMORY_OVERHEAD_FACTOR": "2.5",
            "MODELLOOP_MEMORY_RESERVE_BYTES": "0",
        }
    )
    assert (s.cgroup_root, s.memory_overhead_factor, s.memory_reserve_bytes) == (Path("/fake"), 2.5, 0)
    for env, fragment in [
        ({"MODELLOOP_MEMORY_OVERHEAD_FACTOR": "0.5"}, "must be at least 1"),
        ({"MODELLOOP_MEMORY_OVERHEAD_FACTOR": "big"}, "is not a number"),
        ({"MODELLOOP_MEMORY_RESERVE_BYTES": "-1"}, "must be at least 0"),
    ]:
        with pytest.raises(SettingsError) as e:
            ServerSettings.from_env({**base, **env})
        assert fragment in str(e.value)


def _set_usage(root: Path, limit: int, usage: int) -> None:
    _tree(root, {"memory.max": f"{limit}\n", "memory.current": f"{usage}\n"})


def test_holder_refuses_a_version_that_does_not_fit_and_keeps_serving_the_old_one(tmp_path: Path) -> None:
    plugin = DigitsPlugin()
    models = tmp_path / "models"
    for n in (1, 2, 3):
        write_local_version(plugin, c.DEFAULT_PLUGIN, models, "digits", f"v{n}", n)
    weights = (models / "v1" / "model.safetensors").stat().st_size
    cgroup = tmp_path / "cgroup"
    reserve = 4 * MiB
    limit = 100 * MiB
    _set_usage(cgroup, limit, 10 * MiB)
    holder = ModelHolder(plugin, 1, MemoryCheck(cgroup, 1.5, reserve))

    holder.load("v1", models / "v1")
    holder.load("v2", models / "v2")
    assert (holder.current and holder.current.version, holder.previous and holder.previous.version) == ("v2", "v1")

    _set_usage(cgroup, limit, limit - reserve)  # the container has grown: not even the reserve is free
    with pytest.raises(ModelTooLarge) as e:
        holder.load("v3", models / "v3")
    assert e.value.version == "v3"
    assert e.value.need == int(weights * 1.5) + reserve
    assert e.value.limits.limit_bytes == limit and e.value.limits.usage_bytes == limit - reserve
    assert "v3 (weights" in e.value.message and "x 1.5 + 4.0 MiB reserve" in e.value.message
    assert "with v2 serving (" in e.value.message and "v1 kept for rollback (" in e.value.message
    assert holder.current is not None and holder.current.version == "v2"
    assert holder.previous is not None and holder.previous.version == "v1"

    # rolling back to the model kept in memory needs no memory: not refused
    result = holder.load("v1", models / "v1")
    assert result.from_memory and holder.current.version == "v1"

    _set_usage(cgroup, limit, 10 * MiB)  # room again (limit raised in place, or usage dropped)
    assert holder.load("v3", models / "v3").model.version == "v3"


def test_holder_without_a_readable_cgroup_loads_as_before(tmp_path: Path) -> None:
    plugin = DigitsPlugin()
    write_local_version(plugin, c.DEFAULT_PLUGIN, tmp_path, "digits", "v1", 1)
    holder = ModelHolder(plugin, 1, MemoryCheck(tmp_path / "no-cgroup"))
    assert holder.load("v1", tmp_path / "v1").model.version == "v1"


def test_resident_bytes_counts_the_weights(tmp_path: Path) -> None:
    plugin = DigitsPlugin()
    write_local_version(plugin, c.DEFAULT_PLUGIN, tmp_path, "digits", "v1", 1)
    model = ModelHolder(plugin, 1).load("v1", tmp_path / "v1").model
    file_size = (tmp_path / "v1" / "model.safetensors").stat().st_size
    assert 0.9 * file_size <= model.resident_bytes <= file_size


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ('{"error": "v2 needs about 3 GiB", "reason": "ModelTooLarge", "version": "v2"}', "v2 needs about 3 GiB"),
        ('{"reason": "ModelTooLarge"}', "the version does not fit in the container's memory"),
        ('{"error": "someone else holds the lock"}', None),
        ("<html>409 Conflict</html>", None),
        ('["ModelTooLarge"]', None),
    ],
    ids=["server message", "no message", "another 409", "not JSON", "not an object"],
)
def test_sidecar_recognises_the_servers_model_too_large_answer(body: str, want: str | None) -> None:
    assert too_large_message(body) == want
