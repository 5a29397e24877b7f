"""Pure parts of the server and sidecar: request parsing, desired-version parsing, the latest-wins
slot, backoff, settings. No process, no socket, no file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from modelloop_server.app import Problem, parse_inputs, parse_review, prediction_id
from modelloop_server.settings import ServerSettings, SettingsError, SidecarSettings
from modelloop_server.sidecar import Desired, DesiredError, LatestSlot, backoff, event_body, parse_desired
from modelloop_trainer.examples.digits import DigitsPlugin

PLUGIN = DigitsPlugin()
GOOD = [1.0] * 64
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"input": GOOD, "extra": 1}, 422, "unknown field(s) extra"),
        ({}, 422, "exactly one of"),
        ({"inputs": [GOOD] * 5}, 422, "batch of 5 inputs exceeds the limit of 4"),
        ({"input": [1.0, None] + [0.0] * 62}, 422, "got NoneType null"),
        ({"input": [[1.0, "x"]]}, 422, "got str"),
        ({"input": [-1.0] * 64}, 422, "values must lie in [0, 16]"),
        ({"inputs": [GOOD, [1.0] * 65]}, 422, "input 1: shape (65,)"),
        ("text", 422, "got a JSON str"),
    ],
)
def test_parse_inputs_rejects_with_the_reason(body: Any, status: int, fragment: str) -> None:
    with pytest.raises(Problem) as e:
        parse_inputs(body, PLUGIN, max_batch=4)
    assert e.value.status == status
    assert fragment in e.value.message


def test_parse_inputs_accepts_single_and_batched() -> None:
    x, batched = parse_inputs({"input": list(range(16)) * 4}, PLUGIN, 4)
    assert not batched and x.shape == (1, 64) and x.dtype == torch.float32
    x, batched = parse_inputs({"inputs": [GOOD, GOOD]}, PLUGIN, 4)
    assert batched and x.shape == (2, 64)


def test_parse_review_takes_id_label_reason_and_refuses_what_the_receipt_says() -> None:
    review = parse_review({"id": "r1", "label": 5, "reason": "missed stain"}, PLUGIN.class_names)
    assert (review.id, review.label, review.reason) == ("r1", 5, "missed stain")
    assert parse_review({"id": "r1", "label": PLUGIN.class_names[7]}, PLUGIN.class_names).label == 7
    body = {"id": "r1", "label": 5}
    for bad, fragment in [
        ({**body, "predicted": 3}, "field 'predicted' is not accepted in a review"),
        ({**body, "version": "v2"}, "field 'version' is not accepted"),
        ({**body, "input": GOOD}, "field 'input' is not accepted"),
        ({**body, "requestId": "r1"}, "field 'requestId' is not accepted"),
        ({**body, "label": True}, "label must be a class index 0..9 or a class name"),
        ({**body, "label": 10}, "label must be a class index"),
        ({**body, "label": "cat"}, "label must be a class index"),
        ({"label": 5}, "missing id"),
        ({"id": "r1"}, "missing label"),
        ({**body, "id": "a b"}, "is not a prediction id"),
        ({**body, "id": "x" * 129}, "is not a prediction id"),
        ({**body, "reason": "x" * 501}, "reason must be a string of at most 500"),
        ({**body, "score": 1}, "unknown review field(s) score"),
        ([body], "a review must be a JSON object"),
    ]:
        with pytest.raises(Problem) as e:
            parse_review(bad, PLUGIN.class_names)
        assert fragment in e.value.message and e.value.status == 422


def test_a_predict_request_may_carry_its_own_checked_id() -> None:
    assert prediction_id({"input": GOOD}) is None
    assert prediction_id({"input": GOOD, "id": "order-12:a"}) == "order-12:a"
    for bad, fragment in [
        ("x" * 97, "at most 96"),
        ("a/b", "characters outside"),
        (7, "non-empty string"),
        ("20261202T020000123456Z-0a1b2c3d-4", "reserved"),
    ]:
        with pytest.raises(Problem) as e:
            prediction_id({"input": GOOD, "id": bad})
        assert e.value.status == 422 and fragment in e.value.message and "id" in e.value.message


def _policy(desired: dict[str, Any] | None) -> dict[str, Any]:
    return {"metadata": {"name": "digits"}, "status": {"desired": desired} if desired is not None else {}}


def test_parse_desired() -> None:
    assert parse_desired(_policy(None), "digits") is None
    ok = {"version": "v3", "artifactURI": "s3://models/digits/v3/", "manifestDigest": DIGEST}
    assert parse_desired(_policy(ok), "digits") == Desired("v3", "s3://models/digits/v3/", DIGEST)
    for bad, fragment in [
        ({**ok, "artifactURI": "s3://models/other/v3/"}, "does not point at digits/v3/"),
        ({**ok, "artifactURI": "http://x/digits/v3/"}, "does not start with s3://"),
        ({**ok, "manifestDigest": "md5:abc"}, "is not sha256:"),
        ({**ok, "version": "3"}, "v<N>"),
    ]:
        with pytest.raises(DesiredError) as e:
            parse_desired(_policy(bad), "digits")
        assert fragment in str(e.value)


def test_latest_slot_keeps_only_the_newest_unread_value() -> None:
    slot = LatestSlot()
    assert slot.take(0) is None
    for v in ("v1", "v2", "v3"):
        slot.offer(Desired(v, f"s3://b/digits/{v}/", DIGEST))
    taken = slot.take(0)
    assert taken is not None and taken.version == "v3"
    assert slot.take(0) is None

    got: list[Desired | None] = []
    reader = threading.Thread(target=lambda: got.append(slot.take(30)))
    reader.start()
    slot.offer(Desired("v4", "s3://b/digits/v4/", DIGEST))
    reader.join(30)
    assert got and got[0] is not None and got[0].version == "v4"


def test_backoff_grows_exponentially_within_the_cap_with_jitter() -> None:
    assert [backoff(n, 1, 60, jitter=lambda: 0.5) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(20, 1, 60, jitter=lambda: 0.5) == 60
    assert backoff(1, 1, 60, jitter=lambda: 0.0) == pytest.approx(0.8)
    assert backoff(1, 1, 60, jitter=lambda: 1.0) == pytest.approx(1.2)


def test_event_names_the_pod_and_is_a_warning() -> None:
    s = SidecarSettings.from_env(
        {
            "MODELLOOP_MODEL": "digits",
            "MODELLOOP_POLICY": "p",
            "POD_NAMESPACE": "ns",
            "POD_NAME": "digits-0",
            "MODELLOOP_MODEL_DIR": "/m",
        }
    )
    e = event_body(s, "uid-1", "ArtifactRejected", "x" * 5000, warning=True)
    assert e["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "digits-0",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert e["type"] == "Warning" and len(e["message"]) == 1024 and e["metadata"]["generateName"] == "digits-0."


def test_settings_from_env() -> None:
    env = {"MODELLOOP_MODEL": "digits", "MODELLOOP_MODEL_DIR": "/models"}
    s = ServerSettings.from_env(env)
    assert (s.bind_host, s.port, s.plugin) == ("0.0.0.0", 8080, "modelloop_trainer.examples.digits:DigitsPlugin")
    sc = SidecarSettings.from_env(
        {
            "MODELLOOP_MODEL": "digits",
            "MODELLOOP_POLICY": "p",
            "POD_NAMESPACE": "ns",
            "POD_NAME": "x",
            "MODELLOOP_MODEL_DIR": "/m",
        }
    )
    assert (
        sc.control_socket
        == Path("/m/.control.sock")
        == ServerSettings.from_env({**env, "MODELLOOP_MODEL_DIR": "/m"}).control_path
    )
    moved = {**env, "MODELLOOP_CONTROL_SOCKET": "/run/modelloop/control.sock"}
    assert ServerSettings.from_env(moved).control_path == Path("/run/modelloop/control.sock")
    with pytest.raises(SettingsError, match=r"MODELLOOP_CONTROL_SOCKET='control\.sock' must be an absolute path"):
        ServerSettings.from_env({**env, "MODELLOOP_CONTROL_SOCKET": "control.sock"})
    assert s.spool_dir == Path("/models/.feedback-spool")
    assert ServerSettings.from_env({**env, "MODELLOOP_FEEDBACK_SPOOL_DIR": "/spool"}).spool_dir == Path("/spool")
    assert (s.feedback_durability, s.feedback_commit_window_seconds) == ("write-through", 0.01)
    spooled = ServerSettings.from_env(
        {**env, "MODELLOOP_FEEDBACK_DURABILITY": "spool", "MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS": "0"}
    )
    assert (spooled.feedback_durability, spooled.feedback_commit_window_seconds) == ("spool", 0.0)
    for bad, fragment in [
        ({"MODELLOOP_FEEDBACK_DURABILITY": "emptydir"}, "must be 'write-through' (the default"),
        ({"MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS": "5"}, "must be between 0 and 1"),
        ({"MODELLOOP_FEEDBACK_COMMIT_WINDOW_SECONDS": "soon"}, "is not a number of seconds"),
    ]:
        with pytest.raises(SettingsError, match=next(iter(bad))) as refused:
            ServerSettings.from_env({**env, **bad})
        assert fragment in str(refused.value)
    for env, fragment in [
        ({"MODELLOOP_MODEL_DIR": "/m"}, "MODELLOOP_MODEL is not set"),
        ({"MODELLOOP_MODEL": "Digits!", "MODELLOOP_MODEL_DIR": "/m"}, "not a DNS label"),
        (
            {"MODELLOOP_MODEL": "digits", "MODELLOOP_MODEL_DIR": "/m", "MODELLOOP_PORT": "http"},
            "MODELLOOP_PORT='http' is not an integer",
        ),
        ({"MODELLOOP_MODEL": "digits"}, "MODELLOOP_MODEL_DIR is not set"),
    ]:
        with pytest.raises(SettingsError) as e:
            ServerSettings.from_env(env)
        assert fragment in str(e.value)
