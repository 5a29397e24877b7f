"""The network as it answers requests: the same weights, cheaper arithmetic on CPU.

Called by :meth:`ModelPlugin.for_inference`, which the server's loader and the verifier both use, so
the verifier's latency probe measures the network that serves. Two rewrites, each kept only where
it applies, neither touching what the model computes:

- **conv + batch-norm folding** (``torch.fx``): in eval mode a BatchNorm after a convolution is an
  affine map, folded into the convolution's weights and bias; one pass over the activations less
  per block.
- **channels-last memory format**, for plug-ins that ask for it (``ModelPlugin.channels_last``):
  oneDNN's convolutions run NHWC natively, NCHW pays a reorder on every layer.

Measured with ``bench/bench_inference.py`` (ResNet-18 at 224x224, one torch thread, as each of the
server's inference threads runs). Left out on purpose: TorchScript freezing
(``torch.jit.freeze``/``optimize_for_inference``, similar gains but deprecated, and a traced
module has no parameters for the server's memory accounting) and ``torch.compile`` (minutes of C++
compilation per load on a small CPU quota, recompiles per batch size).

The rewritten network must agree with the eager one on a probe input before it is used
(``PROBABILITY_TOLERANCE``); if it does not, or a rewrite fails (a network ``torch.fx`` cannot
trace), the eager network serves, and the log says why.

``torch.fx`` traces by patching ``torch.nn.Module.__call__`` for the whole process while it runs,
so a forward pass on another thread in that window goes through the tracer and fails ("module is
not installed as a submodule"): a server loading v2 beside a serving v1 answered a request with a
500 that way. :data:`FORWARD_GATE` keeps them apart: forward passes that may run beside a load hold
it shared (``FORWARD_GATE.forward()``), tracing holds it alone, and a waiting trace goes first.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Largest absolute difference in any class probability between the rewritten and the eager network.
# Folding reorders float32 sums: measured differences are ~1e-6 on ResNet-18 logits.
PROBABILITY_TOLERANCE = 1e-4
PROBE_ROWS = 2


class ForwardGate:
    """A readers-writer gate: many forward passes at once, or one ``torch.fx`` trace alone (waiting traces first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._passes = 0
        self._tracing = False
        self._traces_waiting = 0

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._tracing and not self._traces_waiting)
            self._passes += 1
        try:
            yield
        finally:
            with self._cond:
                self._passes -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def trace(self) -> Iterator[None]:
        with self._cond:
            self._traces_waiting += 1
            self._cond.wait_for(lambda: not self._tracing and not self._passes)
            self._traces_waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._cond:
                self._tracing = False
                self._cond.notify_all()


FORWARD_GATE = ForwardGate()


class ChannelsLast(nn.Module):
    """Runs ``inner`` (its weights already channels-last) on a channels-last copy of a 4-D input."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out: Tensor = self.inner(x)
        return out


@dataclass(frozen=True)
class Optimised:
    """The network to serve and what was done to it (``steps`` empty: the eager network as built)."""

    network: nn.Module
    steps: tuple[str, ...]
    max_difference: float = 0.0


def _has(net: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) for m in net.modules())


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (eval mode) with every Conv→BatchNorm pair folded into one convolution."""
    from torch.fx.experimental.optimization import fuse  # imported late: torch.fx is slow to import

    with FORWARD_GATE.trace():
        folded: nn.Module = fuse(net, inplace=False)
    return folded


def channels_last(net: nn.Module) -> nn.Module:
    return ChannelsLast(net.to(memory_format=torch.channels_last))


def optimise(
    net: nn.Module, input_shape: Sequence[int], use_channels_last: bool, device: torch.device | None = None
) -> Optimised:
    """``net`` rewritten for inference, checked against itself on a random probe input.

    ``net`` must be in eval mode with gradients off (the caller's loaded network); it is never
    modified. Channels-last is the plug-in's choice: it pays for ImageNet-sized convolutions
    (ResNet-18, batch 8: about 1.3x) and costs small ones (the 8x8 digits net, batch 32: 2x
    slower). On CUDA the rewrites are skipped: cuDNN picks its own layouts.
    """
    if net.training:
        raise ValueError("optimise() needs a network in eval mode: batch-norm folding uses the running statistics")
    dev = device or next((p.device for p in net.parameters()), torch.device("cpu"))
    if dev.type != "cpu":
        return Optimised(net, ())
    candidate, steps = net, []
    try:
        if _has(net, (nn.BatchNorm2d,)) and _has(net, (nn.Conv2d,)):
            candidate = fold_batch_norms(candidate)
            steps.append("conv+bn folded")
        if use_channels_last and _has(net, (nn.Conv2d,)):
            if candidate is net:
                candidate = copy.deepcopy(net)
            candidate = channels_last(candidate)
            steps.append("channels-last")
    except Exception as e:  # noqa: BLE001 — a network the rewrites do not fit is served as built
        log.warning("serving %s as built: rewriting it for inference failed (%s)", type(net).__name__, e)
        return Optimised(net, ())
    if not steps:
        return Optimised(net, ())
    probe = torch.rand((PROBE_ROWS, *input_shape), generator=torch.Generator().manual_seed(0))
    with FORWARD_GATE.forward(), torch.inference_mode():
        want = torch.softmax(net(probe).float(), dim=1)
        got = torch.softmax(candidate(probe).float(), dim=1)
    diff = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    if not diff <= PROBABILITY_TOLERANCE:
        log.warning(
            "serving %s as built: after %s its probabilities differ from the eager network's by %.3g (> %g)",
            type(net).__name__, ", ".join(steps), diff, PROBABILITY_TOLERANCE,
        )  # fmt: skip
        return Optimised(net, ())
    for p in candidate.parameters():
        p.requires_grad_(False)
    return Optimised(candidate.eval(), tuple(steps), diff)
