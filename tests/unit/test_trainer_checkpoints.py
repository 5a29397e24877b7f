"""Checkpoint naming, completeness, retention and the exact round trip of the training state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from modelloop_trainer.checkpoints import (
    CheckpointListing,
    History,
    TrainingState,
    checkpoint_dir,
    decode,
    encode,
    parse_checkpoint_dir,
    restore_rng,
    scan_keys,
    snapshot,
    to_prune,
)
from modelloop_trainer.earlystopping import EarlyStopping
from modelloop_trainer.examples.digits import DigitsNet

PREFIX = "digits/v4/checkpoints/"


def test_names_sort_lexically_in_epoch_order() -> None:
    names = [checkpoint_dir(e) for e in (2, 10, 100, 9)]
    assert sorted(names) == [checkpoint_dir(e) for e in (2, 9, 10, 100)]
    assert checkpoint_dir(5) == "epoch-000005"
    assert parse_checkpoint_dir("epoch-000005") == 5
    assert parse_checkpoint_dir("epoch-5") is None
    with pytest.raises(ValueError, match="out of range"):
        checkpoint_dir(1_000_000)


def test_a_checkpoint_without_meta_is_incomplete_and_ignored() -> None:
    keys = [
        PREFIX + "epoch-000001/state.safetensors",
        PREFIX + "epoch-000001/meta.json",
        PREFIX + "epoch-000002/state.safetensors",
        PREFIX + "epoch-000002/meta.json",
        PREFIX + "epoch-000003/state.safetensors",  # writer killed before meta.json
        PREFIX + "stray.txt",
        "digits/v4/model.safetensors",
    ]
    listing = scan_keys(PREFIX, keys)
    assert listing.complete == [1, 2]
    assert listing.all == [1, 2, 3]


@pytest.mark.parametrize(
    ("complete", "all_", "pruned"),
    [
        ([], [], []),
        ([1], [1], []),
        ([1, 2], [1, 2], []),
        ([1, 2, 3], [1, 2, 3], [1]),
        ([2, 4, 6], [2, 3, 4, 6, 7], [2, 3, 7]),  # half-written leftovers go too
    ],
)
def test_retention_keeps_the_newest_two_complete(complete: list[int], all_: list[int], pruned: list[int]) -> None:
    assert to_prune(CheckpointListing(complete, all_), keep=2) == pruned


def test_early_stopping_counts_epochs_without_strict_improvement() -> None:
    es = EarlyStopping(patience=2)
    assert es.update(1, 1.0)
    assert not es.update(2, 1.0)  # equal is not better
    assert not es.should_stop
    assert not es.update(3, 1.5)
    assert es.should_stop and es.best_epoch == 1
    restored = EarlyStopping.from_json(es.to_json())
    assert restored == es
    assert EarlyStopping.from_json(EarlyStopping(3).to_json()) == EarlyStopping(3)


def test_early_stopping_patience_zero_never_stops_and_divergence_is_an_error() -> None:
    es = EarlyStopping(patience=0)
    for epoch, loss in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        es.update(epoch, loss)
    assert not es.should_stop
    with pytest.raises(FloatingPointError, match="diverged"):
        es.update(5, float("nan"))


def test_training_state_round_trips_exactly_without_pickle() -> None:
    torch.manual_seed(3)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        net(torch.rand(4, 64) * 16).sum().backward()
        opt.step()
    es = EarlyStopping(5)
    es.update(1, 0.5)
    history = History([1.0, 0.7], [0.9, 0.5], [0.5, 0.8], [0.25, 0.125])
    state = TrainingState(
        2, net.state_dict(), {k: v * 2 for k, v in net.state_dict().items()}, opt.state_dict(), es, history
    )
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    data, meta = encode(state)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    assert not data.startswith(b"\x80"), "a pickle header"
    restored, rng, rng_meta = decode(data, meta, "test")
    assert restored.epoch == 2 and restored.history == history and restored.early_stopping == es
    for k, v in net.state_dict().items():
        assert torch.equal(restored.model[k], v) and torch.equal(restored.best_model[k], v * 2)
    opt2 = torch.optim.Adam(DigitsNet().parameters(), lr=0.5)
    opt2.load_state_dict(restored.optimizer)
    assert opt2.param_groups[0]["lr"] == 0.01
    for pid, pstate in opt.state_dict()["state"].items():
        for key, value in pstate.items():
            assert torch.equal(opt2.state_dict()["state"][pid][key], value)
    assert all(t.dtype == torch.uint8 for t in rng.values())

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(rng, rng_meta)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_snapshot_does_not_change_when_training_goes_on() -> None:
    """The background writer serialises after the loop has moved on: the snapshot must be a copy."""
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters())
    history = History([1.0], [1.0], [0.5], [0.1])
    state = TrainingState(1, net.state_dict(), net.state_dict(), opt.state_dict(), EarlyStopping(5), history)
    tensors, meta = snapshot(state)
    before = tensors["model.fc2.bias"].clone()
    with torch.no_grad():
        net.fc2.bias.add_(1.0)
    history.append(0.5, 0.5, 0.9, 0.1)
    state.early_stopping.update(2, 0.1)
    assert torch.equal(tensors["model.fc2.bias"], before)
    assert meta["history"]["trainLoss"] == [1.0] and meta["earlyStopping"]["best_epoch"] == 0
