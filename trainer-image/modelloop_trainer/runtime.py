"""Where and how training runs: device, precision, compilation and the torch.distributed group.

One process (``modelloop-trainer train``) or many under torchrun (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set): gloo on CPU, NCCL on GPUs. On CUDA the model is compiled and runs under
bf16 autocast where the GPU supports it; on CPU it is plain float32 with deterministic kernels,
which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    amp_dtype: torch.dtype | None
    compile: bool

    @property
    def is_main(self) -> bool:
        """Only this process writes to the bucket (checkpoints, progress, the version)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's value on every rank (for decisions that must agree, e.g. which checkpoint to load)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not an integer (set by torchrun)") from e


def cpu_quota(cgroup_cpu_max: str | None, affinity: int) -> int:
    """CPUs this container may use: the cgroup v2 quota (``cpu.max``, e.g. "200000 100000") when
    set, else the affinity mask."""
    if cgroup_cpu_max:
        quota, _, period = cgroup_cpu_max.strip().partition(" ")
        if quota != "max" and period:
            return max(1, min(affinity, math.ceil(int(quota) / int(period))))
    return max(1, affinity)


def cpu_threads(local_world_size: int) -> int:
    """torch's default is one thread per *host* core: in a pod limited to 2 CPUs on a 64-core node
    that is 64 spinning threads throttled by the CFS quota, an order of magnitude slower."""
    try:
        cpu_max: str | None = Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        cpu_max = None
    return max(1, cpu_quota(cpu_max, len(os.sched_getaffinity(0))) // max(1, local_world_size))


def start(env: Mapping[str, str] | None = None) -> Runtime:
    """Pick the device and, under torchrun, join the process group."""
    e = os.environ if env is None else env
    world = _int_env(e, "WORLD_SIZE", 1)
    rank = _int_env(e, "RANK", 0)
    local_rank = _int_env(e, "LOCAL_RANK", 0)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        amp: torch.dtype | None = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        # Escape hatch for a GPU/driver combination where Inductor misbehaves; compiled by default.
        compile_ = e.get("MODELLOOP_TORCH_COMPILE", "true").lower() != "false"
    else:
        device, amp, compile_ = torch.device("cpu"), None, False
        if not e.get("OMP_NUM_THREADS"):
            torch.set_num_threads(cpu_threads(_int_env(e, "LOCAL_WORLD_SIZE", 1)))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return Runtime(rank, world, local_rank, device, amp, compile_)


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, runtime: Runtime) -> None:
    """Same seed on every rank: DDP starts from rank 0's weights anyway, and data order comes
    from the sampler's (seed, epoch), so ranks stay consistent."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if runtime.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def inference(runtime: Runtime) -> Iterator[None]:
    with torch.inference_mode(), runtime.autocast():
        yield
