"""torch.distributed for runs: one process per rank, started by ``torchrun``.

Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) a run is one
process and nothing here talks to anyone. Under torchrun every rank joins
the process group: ``nccl`` when the run is on CUDA (``--device cuda``; each
rank takes the GPU of its ``LOCAL_RANK``), ``gloo`` on CPU.

The process group's timeout is long (:data:`TIMEOUT`) because the end-of-run
barrier waits for the slowest rank, whose share can take hours longer on an
uneven data set; a rank that dies does not hang the others, torchrun's agent
stops the whole group when one worker fails.
"""
from __future__ import annotations

import datetime
import gc
import os
import types
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, TypeVar

from ..errors import DcamRuntimeWarning, InputError, one_line

T = TypeVar("T")

#: How long a collective may wait for the other ranks.
TIMEOUT = datetime.timedelta(hours=24)


class PeerFailed(Exception):
    """Another rank hit an input error that rank 0 reports; this rank exits quietly (code 2)."""


@dataclass
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.backend is not None

    def _tensor(self, values: Sequence[float]):
        import torch

        return torch.tensor(list(values), dtype=torch.float64,
                            device=self.device if self.backend == "nccl" else "cpu")

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            if self.backend == "nccl":
                td.barrier(device_ids=[self.local_rank])
            else:
                td.barrier()

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; if it raised InputError on any rank, rank 0
        raises it (naming the rank when not every rank failed) and the others
        raise :class:`PeerFailed`, so the message is printed once."""
        if not self.active:
            return fn()
        import torch.distributed as td

        try:
            value, msg = fn(), None
        except InputError as exc:
            value, msg = None, one_line(str(exc))
        msgs: List[Optional[str]] = [None] * self.world
        td.all_gather_object(msgs, msg)
        failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if failed:
            if self.rank != 0:
                raise PeerFailed()
            r, m = failed[0]
            raise InputError(m if len(failed) == self.world or r == 0 else f"rank {r}: {m}")
        return value

    def on_rank0(self, fn: Callable[[], T]) -> Optional[T]:
        """``fn()`` on rank 0 only, then a barrier; an InputError there stops every rank."""
        return self.agree(lambda: fn() if self.rank == 0 else None)

    def sum(self, values: Sequence[float]) -> List[float]:
        return self._all_reduce(values, "SUM")

    def max(self, values: Sequence[float]) -> List[float]:
        return self._all_reduce(values, "MAX")

    def _all_reduce(self, values: Sequence[float], op: str) -> List[float]:
        """``values`` reduced element-wise over the ranks with ``torch.distributed.ReduceOp.<op>``."""
        if not self.active:
            return [float(v) for v in values]
        import torch.distributed as td

        t = self._tensor(values)
        td.all_reduce(t, op=getattr(td.ReduceOp, op))
        return t.cpu().tolist()

    def close(self) -> None:
        if self.active:
            import torch.distributed as td

            holders = default_argument_holders(td.group.WORLD)
            td.destroy_process_group()
            self.backend = None
            if holders:
                # not an error of the run (its records are written), but the rank may still die
                # at exit, and nothing else would say why
                warnings.warn(
                    f"after the run the process group is still held by the default arguments of "
                    f"{', '.join(holders)}, defined after the group was joined; its threads outlive this "
                    f"run and can abort the process at exit. Import their modules before joining "
                    f"(docs/RUNS.md)", DcamRuntimeWarning, stacklevel=2)


def default_argument_holders(obj) -> List[str]:
    """Qualified names of the functions whose default arguments hold ``obj``.

    A function defined with ``group=dist.group.WORLD`` after the process group
    exists keeps the group alive for as long as the function lives (see
    :func:`_import_group_capturing_modules`). One scan of every function the
    garbage collector tracks, run once, when a run closes. (Not
    ``gc.get_referrers``: a defaults tuple or dict holding only objects the
    collector does not track, as a pybind11 ProcessGroup is, may be untracked
    itself and would not be found.)"""
    if obj is None:
        return []
    names = set()
    for fn in gc.get_objects():
        if type(fn) is not types.FunctionType:
            continue
        held = fn.__defaults__ or ()
        if any(v is obj for v in held) or any(v is obj for v in (fn.__kwdefaults__ or {}).values()):
            names.add(f"{fn.__module__}.{fn.__qualname__}")
    return sorted(names)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise InputError(f"{name}={os.environ.get(name)!r} in the environment is not an int") from None


#: torch modules whose functions take ``group.WORLD`` as a default argument,
#: evaluated when the module is first imported.
GROUP_CAPTURING_MODULES = ("torch.distributed.nn", "torch.distributed.optim",
                           "torch.distributed.fsdp.sharded_grad_scaler")


def _import_group_capturing_modules() -> None:
    """Import :data:`GROUP_CAPTURING_MODULES` before the process group exists.

    Imported after it (transformers pulls ``torch.distributed.nn`` in through
    FSDP when the model loads), their default arguments hold the default
    group for good: ``destroy_process_group`` then frees nothing and gloo's
    worker threads outlive ``main``. Under load about one run in ten then lost
    a rank at exit to SIGABRT ("terminate called without an active
    exception"), raised on a thread with no Python frame while the interpreter
    shut down, after the rank's work was written. Imported before, the
    defaults hold ``None``."""
    import importlib

    for name in GROUP_CAPTURING_MODULES:
        importlib.import_module(name)


def setup(device: Optional[str]) -> Dist:
    """Join torchrun's process group (if launched by torchrun with more than
    one process) and pick this rank's device. ``device``: ``--device``;
    with several ranks ``cuda`` means one GPU per rank (``cuda:LOCAL_RANK``)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = device or "cpu"
    if world <= 1:
        return Dist(device=device)
    # torchrun sets these; set by hand without them, the process group's ValueError was a traceback
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} in the environment is not below WORLD_SIZE={world} (launch with torchrun)")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise InputError(f"WORLD_SIZE={world} in the environment but {' and '.join(missing)} not set: launch "
                         "several processes with torchrun (or unset WORLD_SIZE)")
    import torch
    import torch.distributed as td

    kind = device.split(":")[0]
    if kind == "cuda":
        if ":" in device:
            raise InputError(f"--device: under torchrun give --device cuda (each rank takes the GPU of its "
                             f"LOCAL_RANK), not {device!r}")
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise InputError(f"--device: rank {rank} needs GPU {local} (LOCAL_RANK) but this machine has "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    elif kind == "cpu":
        backend = "gloo"
    else:
        raise InputError(f"--device: runs on several processes support cpu and cuda, not {device!r}")
    _import_group_capturing_modules()
    td.init_process_group(backend=backend, timeout=TIMEOUT,
                          **({"device_id": torch.device(device)} if backend == "nccl" else {}))
    return Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=local, device=device, backend=backend)


__all__ = ["Dist", "setup", "PeerFailed", "TIMEOUT", "default_argument_holders"]
