"""torchrun support: process group setup from the environment, rank-aware helpers.

Shared by training (:mod:`iste.train.loop`), slide cohorts (:mod:`iste.slides.cohort`) and the
downstream trainers, so it sits below all of them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from iste.text import error_line


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _launch_number(name: str, default: int, *, low: int = 0) -> int:
    """The whole number torchrun set in the environment variable ``name`` (``default`` where
    it is unset or blank). ValueError naming the variable for anything else: ``int()``'s
    "invalid literal for int() with base 10: 'abc'" named none, and a WORLD_SIZE left set
    without a RANK (an exported variable, another launcher) was a KeyError traceback."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise ValueError(f"{name}={os.environ[name]!r} in the environment is not a whole number "
                         f">= {low}: torchrun sets it for each process it starts; unset it to "
                         "run one process")
    return int(text)


def launched_world() -> int:
    """Processes torchrun started for this job (``WORLD_SIZE``; 1 without torchrun)."""
    return _launch_number("WORLD_SIZE", 1, low=1)


def launched_rank() -> int:
    """This process's rank among those torchrun started (``RANK``; 0 without torchrun)."""
    return _launch_number("RANK", 0)


def setup(device: torch.device | None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), if any.

    Returns the rank info and the device this process should use: its local GPU when CUDA is
    available and no device or a plain ``cuda`` was asked for.

    Raises:
        ValueError: a GPU index asked for that is not this process's own (every rank would
            take the same GPU, which NCCL refuses).
    """
    world = launched_world()
    if world <= 1:
        return DistInfo(), device or _default_device(0)
    if not os.environ.get("RANK", "").strip():
        raise ValueError(f"WORLD_SIZE={world} in the environment but no RANK: start several "
                         "processes with torchrun (which sets both), or unset WORLD_SIZE")
    rank = launched_rank()
    if rank >= world:
        raise ValueError(f"RANK={rank} in the environment is not below WORLD_SIZE={world}")
    info = DistInfo(rank, world, _launch_number("LOCAL_RANK", 0))
    device = _rank_device(device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _join_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


_group_numbers = itertools.count()  # of the process groups this process joins (_join_group)


def _join_group(backend: str) -> None:
    """Join the process group torchrun describes, on keys of torchrun's store that no group
    this process joined before used. torch's destroy_process_group leaves a group's keys in
    the store, and a group made again on the same keys (a second ``iste.train`` in one
    torchrun process, after the first tore its group down) read the first's: it waited
    forever in its first barrier, or failed connecting to the first group's closed ports
    (pytorch/pytorch#55967)."""
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            store=dist.PrefixStore(f"iste{next(_group_numbers)}", store))


def _rank_device(device: torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        return _default_device(local_rank)
    if device.type != "cuda":
        return device
    own = local_rank % max(1, torch.cuda.device_count())
    if device.index is None:
        return torch.device("cuda", own)
    if device.index != own:
        raise ValueError(f"--device {device}: under torchrun each process takes the GPU of its "
                         f"local rank (cuda:{own} for local rank {local_rank}); give --device "
                         "cuda, or set CUDA_VISIBLE_DEVICES to choose the GPUs")
    return device


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def lost_peer_message(err: BaseException) -> str | None:
    """One line for a failure of the process group under torchrun (another rank stopped:
    killed, out of memory, or its own error, and this rank's next collective failed), or None
    for any other error. gloo and NCCL raise these as ``DistError`` or as a plain
    RuntimeError naming the backend (from DDP's gradient hooks)."""
    try:
        world, rank = launched_world(), launched_rank()
    except ValueError:  # variables torchrun did not set: no process group to have lost
        return None
    if world <= 1 or not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if not (isinstance(err, dist.DistError) or any(name in text for name in _BACKENDS)):
        return None
    reason = error_line(err)
    reason = reason.split("] ", 1)[-1] if reason.startswith("[") else reason  # source path
    reason = reason.split(". ", 1)[0].rstrip(".")  # the backend's advice after it
    return (f"rank {rank} lost contact with the other ranks ({reason[:200]}): "
            "another rank stopped first (torchrun's report names it); what was saved is kept")


_BACKENDS = ("gloo", "NCCL", "ProcessGroup")


def all_min(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of ``value`` (any shape, on this rank's device) over the ranks;
    ``value`` itself without torchrun. Every rank must call it."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def mean_over_ranks(info: DistInfo, values: dict[str, Any], device: torch.device
                    ) -> dict[str, float]:
    """Each number of ``values`` (0-d tensors or floats) averaged over the ranks, e.g. a
    training step's loss: with equal parts per rank, the loss of the step's whole batch
    (2 ranks of 2 samples of a tiny ISTE logged 0.564 for rank 0's part, where 1 process of
    the 4 samples gives 0.547). ``values`` as floats without torchrun. Every rank must call
    it, with the same names in the same order."""
    numbers = [float(v) for v in values.values()]
    if info.enabled:  # gloo (CPU) and NCCL (CUDA) both reduce float64
        summed = torch.tensor(numbers, dtype=torch.float64, device=device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        numbers = (summed / info.world).tolist()
    return dict(zip(values, numbers))


PATIENCE = timedelta(days=7)
"""How long :func:`barrier` and :func:`gather` wait for the other ranks: for their work (a
cohort's last slides, rank 0's SR images), whose length nothing bounds. torch's collective
timeout (30 min on gloo, 10 on NCCL) stopped a rank that finished its share first, and
torchrun then ended the others in the middle of theirs. A rank that stops is still noticed at
once (its connections close, and torchrun ends the rest)."""

_patient: list = []  # [(the default group, its gloo group of PATIENCE)]


def _patient_group():
    """A gloo group of all ranks whose collectives wait up to :data:`PATIENCE`, made at the
    first wait in each default group (every rank makes it there: its own wait is as patient)."""
    world = dist.group.WORLD
    if not _patient or _patient[0][0] is not world:
        _patient[:] = [(world, dist.new_group(backend="gloo", timeout=PATIENCE))]
    return _patient[0][1]


def barrier(info: DistInfo) -> None:
    """Wait for every rank to get here (up to :data:`PATIENCE`). Every rank must call it."""
    if info.enabled:
        dist.barrier(group=_patient_group())


def gather(info: DistInfo, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, once all have given theirs (up to
    :data:`PATIENCE`); ``[value]`` without torchrun. Every rank must call it."""
    if not info.enabled:
        return [value]
    parts: list = [None] * info.world
    dist.all_gather_object(parts, value, group=_patient_group())
    return parts


def largest(info: DistInfo, number: int) -> int:
    """The largest of every rank's ``number`` (``number`` itself without torchrun), e.g. the
    signal that stops a run (0: none). Reduced on the CPU (:data:`PATIENCE`'s gloo group), so
    asking at every step makes no rank wait for its device. Every rank must call it."""
    if not info.enabled:
        return number
    value = torch.tensor([number], dtype=torch.long)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_patient_group())
    return int(value[0])


def broadcast(info: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` (picklable; what the other ranks pass is ignored) on every rank
    (waiting up to :data:`PATIENCE`); ``value`` without torchrun. Every rank must call it."""
    if not info.enabled:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0, group=_patient_group())
    return box[0]


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
        _patient.clear()


@contextlib.contextmanager
def process_group(device: torch.device | None) -> Iterator[tuple[DistInfo, torch.device]]:
    """:func:`setup` for the block, the group it made destroyed however the block ends: a
    group left standing when a run fails can abort the process at its exit ("terminate
    called without an active exception"). A group the caller made stays (a library user's)."""
    made_here = not (dist.is_available() and dist.is_initialized())
    info, device = setup(device)
    try:
        yield info, device
    finally:
        if made_here:
            teardown(info)
