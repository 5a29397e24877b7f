"""CPU inference of the laundry ResNet-18 (224x224): each rewrite of ``modelloop_trainer.inference``
against the network as built, per image at batch 1 and 8, one torch thread (as each of the server's
inference threads runs).

Variants run interleaved, in alternating order per round, so the machine's drifting load hits them
all; each is timed in CPU seconds of the calling thread (torch runs in it, single-threaded), which a
shared machine's other load does not inflate the way it does wall time; medians are reported. Every variant's probabilities are checked against eager first. The
TorchScript variants are measured for the record only (the server does not use them: see the
inference module's docstring). The figure is the variant the server serves (folded + channels-last).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import report
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.inference import PROBABILITY_TOLERANCE, channels_last, fold_batch_norms

SERVED = "folded + channels-last"


def _network(plugin: LaundryPlugin) -> nn.Module:
    """The plug-in's network with batch-norm statistics away from their initial 0/1 (as after training)."""
    torch.manual_seed(0)
    net = plugin.build().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def variants(net: nn.Module, example: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
    out: dict[str, Callable[[Tensor], Tensor]] = {
        "eager (as built)": net,
        "channels-last": channels_last(copy.deepcopy(net)),
        "folded": fold_batch_norms(net),
        SERVED: channels_last(fold_batch_norms(net)),
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
        traced = torch.jit.trace(copy.deepcopy(net), example)
        out["torch.jit freeze + optimize_for_inference"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return out


def run(rounds: int, repeats: int) -> list[report.Measurement]:
    torch.set_num_threads(1)
    plugin = LaundryPlugin()
    net = _network(plugin)
    x = {rows: torch.rand(rows, *plugin.input_shape) for rows in (1, 8)}
    vs = variants(net, x[1])
    with torch.inference_mode():
        want = torch.softmax(net(x[8]), dim=1)
        diffs = {name: float((torch.softmax(f(x[8]), dim=1) - want).abs().max()) for name, f in vs.items()}
        for f in vs.values():  # warm-up: oneDNN builds its primitives on first use of each shape
            f(x[1]), f(x[8])
    ms: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in vs}
    for r in range(rounds):
        order = list(vs.items()) if r % 2 == 0 else list(vs.items())[::-1]
        for name, f in order:
            with torch.inference_mode():
                for rows, batch in x.items():
                    t0 = (
                        time.thread_time()
                    )  # CPU time of this thread (torch runs single-threaded in it): robust to load
                    for _ in range(repeats):
                        f(batch)
                    ms[name][rows].append((time.thread_time() - t0) * 1000 / repeats / rows)
    med = {name: {rows: statistics.median(v) for rows, v in per.items()} for name, per in ms.items()}
    for name in vs:
        print(
            f"{name:44s} batch 1 {med[name][1]:7.1f} ms CPU/image   batch 8 {med[name][8]:7.1f} ms CPU/image   "
            f"max |dp| {diffs[name]:.1e}",
            flush=True,
        )
    eager = med["eager (as built)"]
    return [
        report.Measurement(
            name=f"ResNet-18 224x224 CPU inference, batch {rows}, one torch thread",
            unit="images/s",
            baseline=1000 / eager[rows],
            figure=1000 / med[SERVED][rows],
            baseline_label="the network as built (eager, NCHW)",
            figure_label=f"as served: {SERVED} (max probability difference {diffs[SERVED]:.1e})",
            target=f"ratio >= 1.0, probabilities within {PROBABILITY_TOLERANCE:g}",
            passed=med[SERVED][rows] <= eager[rows] and diffs[SERVED] <= PROBABILITY_TOLERANCE,
            details={"msPerImage": {name: per[rows] for name, per in med.items()}, "maxProbabilityDiff": diffs},
        )
        for rows in (1, 8)
    ]


def main() -> None:
    p = report.parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=3, help="forward passes per variant, batch and round")
    args = p.parse_args()
    for m in run(args.rounds or (2 if args.quick else 6), args.repeats):
        report.emit(m)


if __name__ == "__main__":
    main()
