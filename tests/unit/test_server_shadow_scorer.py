"""Shadow scoring in the server: the candidate loads beside the serving model, scores what was answered
off the response path, drops work instead of queueing it without bound, and is promoted without a
second load. The processes-level proof (sidecar, MinIO, API server) is tests/integration/test_server_shadow.py."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from modelloop.api import constants as c
from modelloop.api.artifacts import ArtifactError
from modelloop_dev.processes import wait_for
from modelloop_server.metrics import ServerMetrics
from modelloop_server.model import LoadedModel, ModelHolder
from modelloop_server.shadow import ShadowPair, ShadowScorer
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import png, swatch


@pytest.fixture
def holder(tmp_path: Path) -> ModelHolder:
    plugin = DigitsPlugin()
    for n in (1, 2, 3):
        write_local_version(plugin, c.DEFAULT_PLUGIN, tmp_path, "digits", f"v{n}", n)
    h = ModelHolder(plugin, warmup_passes=1)
    h.load("v1", tmp_path / "v1")
    return h


def _sample(metrics: ServerMetrics, name: str, version: str) -> float:
    value = metrics.registry.get_sample_value(name, {"candidate": version})
    return value or 0.0


def test_promoting_the_shadow_reuses_the_loaded_model(holder: ModelHolder, tmp_path: Path) -> None:
    shadow = holder.load_shadow("v2", tmp_path / "v2")
    assert not shadow.from_memory and holder.shadow is shadow.model
    assert holder.current is not None and holder.current.version == "v1", "a shadow must never answer"
    again = holder.load_shadow("v2", tmp_path / "v2")
    assert again.model is shadow.model and again.from_memory

    swap = holder.load("v2", tmp_path / "v2")
    assert swap.from_shadow and swap.from_memory
    assert swap.model is shadow.model, "promotion loaded the candidate a second time"
    assert holder.current is shadow.model and holder.shadow is None
    assert holder.previous is not None and holder.previous.version == "v1"


def test_the_serving_version_cannot_be_its_own_shadow(holder: ModelHolder, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="serving version"):
        holder.load_shadow("v1", tmp_path / "v1")
    assert holder.shadow is None


def test_unloading_the_shadow_leaves_serving_alone(holder: ModelHolder, tmp_path: Path) -> None:
    holder.load_shadow("v2", tmp_path / "v2")
    old = holder.unload_shadow()
    assert old is not None and old.version == "v2" and holder.shadow is None
    assert holder.current is not None and holder.current.version == "v1"
    swap = holder.load("v2", tmp_path / "v2")
    assert not swap.from_shadow and not swap.from_memory, "a withdrawn shadow must not be promoted from memory"


def test_scored_pairs_match_both_models_on_the_same_input(holder: ModelHolder, tmp_path: Path) -> None:
    holder.load_shadow("v3", tmp_path / "v3")
    metrics = ServerMetrics()
    scorer = ShadowScorer(lambda: holder.shadow, metrics, queue_rows=64, pairs_kept=1000)
    heard: list[ShadowPair] = []
    done = threading.Event()

    def listener(pair: ShadowPair) -> None:
        heard.append(pair)
        if len(heard) == 20:
            done.set()

    scorer.add_listener(lambda pair: 1 / 0)  # a broken listener must not stop the others or the scoring
    scorer.add_listener(listener)
    scorer.start()
    active, shadow = holder.current, holder.shadow
    assert isinstance(active, LoadedModel) and isinstance(shadow, LoadedModel)
    torch.manual_seed(0)
    inputs = [torch.rand((1 + i % 3, 64)) * 16 for i in range(20)]
    try:
        for i, x in enumerate(inputs):
            scorer.submit(f"r{i}", active, x, active.probabilities(x))
        assert done.wait(30), f"only {len(heard)} of 20 requests were shadow-scored"
    finally:
        scorer.close()
    rows = sum(x.shape[0] for x in inputs)
    agreed = 0
    for i, x in enumerate(inputs):
        pair = scorer.pair(f"r{i}")
        assert pair is not None
        assert pair.active == tuple(active.probabilities(x).argmax(dim=1).tolist())
        assert pair.candidate == tuple(shadow.probabilities(x).argmax(dim=1).tolist())
        assert (pair.active_version, pair.candidate_version) == ("v1", "v3")
        agreed += pair.agreed
    assert scorer.counts("v3") == (rows, agreed)
    assert _sample(metrics, "modelloop_server_shadow_scored_requests_total", "v3") == 20
    assert _sample(metrics, "modelloop_server_shadow_predictions_total", "v3") == rows
    assert _sample(metrics, "modelloop_server_shadow_agreement_ratio", "v3") == pytest.approx(agreed / rows)
    assert _sample(metrics, "modelloop_server_shadow_dropped_requests_total", "v3") == 0

    scorer.forget("v3")
    assert scorer.counts("v3") == (0, 0)
    assert metrics.registry.get_sample_value("modelloop_server_shadow_agreement_ratio", {"candidate": "v3"}) is None


def test_a_full_queue_drops_shadow_work_without_blocking(holder: ModelHolder, tmp_path: Path) -> None:
    holder.load_shadow("v2", tmp_path / "v2")
    metrics = ServerMetrics()
    scorer = ShadowScorer(lambda: holder.shadow, metrics, queue_rows=3)  # not started: nothing drains the queue
    active = holder.current
    assert active is not None
    x = torch.zeros((1, 64))
    for i in range(10):
        scorer.submit(f"r{i}", active, x, active.probabilities(x))
    assert scorer.queued == 3
    assert _sample(metrics, "modelloop_server_shadow_dropped_requests_total", "v2") == 7


def test_nothing_is_queued_without_a_shadow(holder: ModelHolder) -> None:
    metrics = ServerMetrics()
    scorer = ShadowScorer(lambda: holder.shadow, metrics, queue_rows=3)
    active = holder.current
    assert active is not None
    x = torch.zeros((1, 64))
    scorer.submit("r", active, x, active.probabilities(x))
    assert scorer.queued == 0


@pytest.mark.parametrize(
    ("review_id", "active_version", "predicted", "expected"),
    [
        ("p", "v1", 3, ("v2", 5)),  # a single prediction
        ("b.1", "v1", 7, ("v2", 7)),  # row 1 of a batch answered as request "b"
        ("b.2", "v1", 0, None),  # no such row
        ("p", "v0", 3, None),  # the receipt names another active version: not this pair
        ("p", "v1", 4, None),  # the receipt's answer differs from the pair's: not trusted
        ("elsewhere", "v1", 3, None),  # another replica answered it (or the pair was dropped)
    ],
)
def test_a_review_finds_the_candidates_answer_to_the_same_prediction(
    holder: ModelHolder, review_id: str, active_version: str, predicted: int, expected: tuple[str, int] | None
) -> None:
    scorer = ShadowScorer(lambda: holder.shadow, ServerMetrics(), queue_rows=8)
    scorer._record(ShadowPair("p", "v1", (3,), "v2", (5,)), counted=False)
    scorer._record(ShadowPair("b", "v1", (2, 7), "v2", (2, 7)), counted=False)
    assert scorer.candidate_answer(review_id, active_version, predicted) == expected


def test_a_candidate_trained_at_another_image_size_scores_the_encoded_inputs_decoded_again(tmp_path: Path) -> None:
    """The active model decodes at 48 px, the candidate was trained at 32 px: the shadow decodes the photo
    again for the candidate, off the response path; numbers of the wrong shape fail as shadow work only."""
    ref = "modelloop_trainer.examples.laundry:LaundryPlugin"
    write_local_version(LaundryPlugin(image_size=48, env={}), ref, tmp_path, "laundry", "v1", 1)
    write_local_version(LaundryPlugin(image_size=32, env={}), ref, tmp_path, "laundry", "v2", 2)
    holder = ModelHolder(LaundryPlugin(image_size=48, env={}), warmup_passes=1)
    active = holder.load("v1", tmp_path / "v1").model
    candidate = holder.load_shadow("v2", tmp_path / "v2").model
    assert active.plugin is not None and candidate.plugin is not None
    metrics = ServerMetrics()
    scorer = ShadowScorer(lambda: holder.shadow, metrics)
    scorer.start()
    try:
        photos = [png(swatch(np.random.default_rng(i), 64, defect=i == 1).pixels) for i in range(2)]
        x = active.plugin.preprocess([active.plugin.decode_bytes(p) for p in photos])
        probs = active.probabilities(x)
        scorer.submit("photos", active, x, probs, photos)
        scorer.submit("numbers", active, x, probs)
        wait_for(
            lambda: (
                scorer.pair("photos") is not None
                and _sample(metrics, "modelloop_server_shadow_failed_requests_total", "v2") == 1
            ),
            30,
            "both scored",
        )
        expected = candidate.probabilities(
            candidate.plugin.preprocess([candidate.plugin.decode_bytes(p) for p in photos])
        )
        pair = scorer.pair("photos")
        assert pair is not None and pair.candidate == tuple(expected.argmax(dim=1).tolist())
        assert scorer.pair("numbers") is None
    finally:
        scorer.close()
