"""The plug-in interface and the digits example: input validation, augmentation, metrics, splits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import torch

from modelloop.api.feedback import FeedbackRecord
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.feedback import select_keys
from modelloop_trainer.metrics import evaluate_logits
from modelloop_trainer.plugin import DatasetError, InputError, load_plugin
from modelloop_trainer.train import epoch_generator, split_train_validation

plugin = DigitsPlugin()


def test_preprocess_accepts_flat_and_nested_inputs() -> None:
    flat = [float(i % 17) for i in range(64)]
    nested = [flat[r * 8 : (r + 1) * 8] for r in range(8)]
    x = plugin.preprocess([flat, [int(v) for v in flat]])
    assert x.dtype == torch.float32 and x.shape == (2, 64)
    assert torch.equal(x[0], x[1])
    with pytest.raises(InputError, match=r"shape \(8, 8\) does not match"):
        # (8, 8) is accepted only when the plug-in's input shape is (8, 8); digits is flat (64,)
        plugin.preprocess([nested])


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([], "empty list"),
        ("abc", "expected a list of inputs"),
        ([[1.0] * 63], r"input 0: shape \(63,\)"),
        ([[0.0] * 64, [1.0] * 65], r"input 1: shape \(65,\)"),
        ([["a"] * 64], "values must be numbers"),
        ([[True] * 64], "values must be numbers"),
        ([[0.0] * 63 + [float("nan")]], "NaN"),
        ([[0.0] * 63 + [17.0]], r"must lie in \[0, 16\]"),
        ([[0.0] * 32 + [[1.0, 2.0]] * 32], "input 0"),
    ],
)
def test_preprocess_rejects_bad_input_with_the_reason(batch: list[object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        plugin.preprocess(batch)


def test_feedback_with_an_unknown_label_is_rejected() -> None:
    record = FeedbackRecord(
        id="r1", version="v1", input=[0.0] * 64, predicted=1, label=12, reviewed_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    with pytest.raises(InputError, match="label 12 is not a class"):
        plugin.decode_feedback([record])


def test_augmentation_is_a_deterministic_one_pixel_shift() -> None:
    x = torch.zeros(50, 64)
    x[:, 3 * 8 + 4] = 16.0  # one lit pixel at row 3, column 4
    a = plugin.augment(x, epoch_generator(0, 1, 0))
    b = plugin.augment(x, epoch_generator(0, 1, 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, plugin.augment(x, epoch_generator(0, 2, 0)))
    lit = a.reshape(50, 8, 8).nonzero()
    assert len(lit) == 50, "each image keeps its pixel"
    assert set(lit[:, 1].tolist()) <= {2, 3, 4} and set(lit[:, 2].tolist()) <= {3, 4, 5}
    assert len({(r, c) for _, r, c in lit.tolist()}) > 1, "shifts vary"


def test_metrics_from_a_known_confusion() -> None:
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 1])
    logits = torch.nn.functional.one_hot(pred, 3).float() * 10
    ev = evaluate_logits(logits, target, 3)
    assert ev.confusion == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert ev.accuracy == pytest.approx(3 / 5)
    assert ev.per_class_accuracy == pytest.approx([0.5, 1.0, 0.0])
    # F1: class 0 = 2/3, class 1 = 2*(0.5*1)/(1.5) = 2/3, class 2 = 0
    assert ev.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="empty"):
        evaluate_logits(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 3)


def test_validation_split_is_seeded_and_disjoint() -> None:
    train, val = split_train_validation(100, 0.2, seed=4)
    assert len(val) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(set(train.tolist()) | set(val.tolist())) == 100
    again_train, again_val = split_train_validation(100, 0.2, seed=4)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, split_train_validation(100, 0.2, seed=5)[1])


def test_feedback_selection_stops_at_the_operators_bound() -> None:
    p = "digits/feedback/"
    keys = [p + "20260101T000000Z-a.jsonl", p + "20260102T000000Z-b.jsonl", p + "20260103T000000Z-c.jsonl", p + "x.tmp"]
    assert select_keys(keys, p, p + "20260102T000000Z-b.jsonl") == keys[:2]
    assert select_keys(keys, p, None) == []


def test_split_files_are_checked() -> None:
    x, y = torch.zeros(3, 64), torch.zeros(3, dtype=torch.int64)
    assert len(plugin.check_split({"x": x, "y": y}, "s3://b/k")) == 3
    with pytest.raises(DatasetError, match="s3://b/k: expected x float32"):
        plugin.check_split({"x": x.double(), "y": y}, "s3://b/k")
    with pytest.raises(DatasetError, match="labels outside"):
        plugin.check_split({"x": x, "y": y + 10}, "s3://b/k")
    with pytest.raises(DatasetError, match="samples have shape"):
        plugin.check_split({"x": torch.zeros(3, 63), "y": y}, "s3://b/k")


def test_load_plugin_names_what_is_wrong() -> None:
    assert isinstance(load_plugin("modelloop_trainer.examples.digits:DigitsPlugin"), DigitsPlugin)
    with pytest.raises(ValueError, match="must look like"):
        load_plugin("modelloop_trainer.examples.digits.DigitsPlugin")
    with pytest.raises(ValueError, match="cannot import module"):
        load_plugin("no_such_module_xyz:Model")
    with pytest.raises(ValueError, match=r"not a modelloop_trainer\.plugin\.ModelPlugin subclass"):
        load_plugin("modelloop_trainer.examples.digits:DigitsNet")
