"""Loading a version beside one that serves: torch.fx's trace must not break the serving forward passes.

``torch.fx`` patches ``torch.nn.Module.__call__`` for the whole process while it traces; before the
gate, a request answered during a load of the next version could fail with "module is not installed
as a submodule" (a 500 seen in tests/integration/test_image_loop.py). Real torch, two threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from modelloop_trainer import inference
from modelloop_trainer.inference import FORWARD_GATE, fold_batch_norms


def network() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def serve_while_loading(traces: int) -> list[BaseException]:
    """Forward passes on one network through the gate while another is folded ``traces`` times."""
    serving, loading = network(), network()
    x = torch.rand(2, 4, 8, 8)
    errors: list[BaseException] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                with FORWARD_GATE.forward(), torch.inference_mode():
                    serving(x)
            except Exception as e:  # noqa: BLE001 - collected and asserted on
                errors.append(e)

    workers = [threading.Thread(target=serve) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for _ in range(traces):
            fold_batch_norms(loading)
    finally:
        done.set()
        for w in workers:
            w.join(timeout=30)
    return errors


def test_forward_passes_beside_a_trace_all_succeed() -> None:
    assert serve_while_loading(traces=30) == []


def test_without_the_gate_a_forward_pass_beside_a_trace_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure the gate prevents, shown with the gate taken away (so the test above can fail)."""

    @contextlib.contextmanager
    def open_gate() -> Iterator[None]:
        yield

    monkeypatch.setattr(FORWARD_GATE, "forward", open_gate)
    monkeypatch.setattr(FORWARD_GATE, "trace", open_gate)
    errors = serve_while_loading(traces=30)
    assert errors, "no forward pass met the trace: the race this gate prevents did not happen"
    assert any("not installed as a submodule" in str(e) for e in errors), errors[:3]


def test_a_waiting_trace_goes_before_new_forward_passes() -> None:
    """Under steady load the passes overlap, so a trace that waited for a gap with none running would wait forever."""
    gate = inference.ForwardGate()
    order: list[str] = []
    traced, release = threading.Event(), threading.Event()

    def trace() -> None:
        with gate.trace():
            order.append("trace")
            traced.set()
            release.wait(10)

    def late_pass() -> None:
        with gate.forward():
            order.append("forward")

    tracer = threading.Thread(target=trace)
    late = threading.Thread(target=late_pass)
    with gate.forward():
        tracer.start()
        with gate._cond:
            assert gate._cond.wait_for(lambda: gate._traces_waiting == 1, timeout=10)
        late.start()
    assert traced.wait(10), "the trace did not get the gate when the pass before it ended"
    assert order == ["trace"], "a pass that arrived after the trace went first"
    release.set()
    tracer.join(10)
    late.join(10)
    assert order == ["trace", "forward"]
