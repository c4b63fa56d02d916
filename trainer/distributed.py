"""Data-parallel training under torchrun: the process group, features gathered across ranks, each
rank's share of the shards, and the rule that rank 0 alone writes.

`torchrun` (or SLURM's `srun` with the same variables) starts one process per device and tells each
its RANK, WORLD_SIZE and LOCAL_RANK; a plain `python -m trainer.train` has none of them and is a
world of one, for which every method here does nothing (no process group, no thread, no message).

Faults: the step's collectives run under `--dist-timeout`, so no rank waits forever on a peer that
hangs; a peer that dies (kill -9) breaks its gloo connections at once. Either way the survivors
find out *which* rank went missing from heartbeats kept in the launcher's key-value store (which
outlives the workers under torchrun) and end with `PeerLostError` naming it. Waits on rank 0's own
work (checkpoints, evaluation) go through a second gloo group with a long timeout, so a slow save
or a long evaluation is not mistaken for a lost peer.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0  # seconds a step's collective may wait for a peer
CONTROL_TIMEOUT = datetime.timedelta(hours=2)  # rank 0's checkpoint save or evaluation may take long
HEARTBEAT_SECONDS = 0.5
_BUCKET_BYTES = 32 << 20  # gradients are averaged in flat buckets of about this size


class DistributedError(RuntimeError):
    """The world cannot be formed or used as asked (one line for the user)."""


class PeerLostError(DistributedError):
    """Another rank stopped answering; the message names it."""


class _Stopped(Exception):
    """SIGTERM from the launcher (torchrun stops the other workers when one fails)."""


class World:
    """This process's place among the ranks; a world of one when not started by torchrun."""

    def __init__(
        self,
        rank: int = 0,
        size: int = 1,
        local_rank: int = 0,
        local_size: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.rank, self.size, self.local_rank, self.local_size = rank, size, local_rank, local_size
        self.device = device or torch.device("cpu")  # where the step's tensors (and NCCL's) live
        self._control: Any = None  # the gloo group for waits on rank 0 (long timeout)
        self._beating = threading.Event()
        self._heart: threading.Thread | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- the step's collectives ---------------------------------------------------------------------
    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows in rank order, gradients flowing back to each rank's own (open_clip's
        gather-with-grad): the loss then sees all samples of the step."""
        if not self.distributed:
            return rows
        with warnings.catch_warnings():  # deprecated for a private successor; open_clip uses it too
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_nn.all_gather(rows.contiguous()), dim=0)

    def average_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        """Replace each gradient by its mean over ranks (what DDP does, in flat buckets)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        for bucket in _buckets(grads):
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
            dist.all_reduce(flat)
            flat /= self.size
            for grad, averaged in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                grad.copy_(averaged.view_as(grad))

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks of a few numbers (skip counts, samples)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere, so every replica starts equal."""
        if not self.distributed:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    # -- rank 0's work and the others' wait ---------------------------------------------------------
    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's (picklable) value, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value, group=self._control)
        return out

    def main_only(self, work: Callable[..., T], *args: Any) -> T | None:
        """Run `work` on rank 0 alone (writing the run's files, evaluating); the others wait until it
        is done, so a checkpoint is complete before anyone goes on. Returns its result on rank 0."""
        result = work(*args) if self.is_main else None
        self.barrier()
        return result

    def barrier(self) -> None:
        """Wait until every rank gets here (long timeout: rank 0 may be saving or evaluating)."""
        if self.distributed:
            dist.barrier(group=self._control)

    def log(self, message: str) -> None:
        """A line on stderr, once per run (from rank 0)."""
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    # -- faults -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Turn a failed collective (or the launcher's SIGTERM) into PeerLostError naming the lost rank."""
        if not self.distributed:
            yield
            return
        try:
            yield
        except (RuntimeError, _Stopped) as error:
            if isinstance(error, DistributedError) or not (
                isinstance(error, _Stopped) or _is_collective_error(error)
            ):
                raise
            lost: list[int] | None = None
            for _ in range(3):  # a signal may cut the diagnosis short: the launcher's, a loader's end
                try:
                    lost = self.lost_ranks()
                    break
                except (RuntimeError, _Stopped):
                    continue
            raise PeerLostError(_lost_message(self.rank, lost, error)) from error

    def lost_ranks(self) -> list[int] | None:
        """Ranks whose heartbeat stopped (none found: []); None when the store itself is gone."""
        try:
            store = self._client(timeout=5.0)
            before = [store.add(f"beat/{r}", 0) for r in range(self.size)]
            time.sleep(4 * HEARTBEAT_SECONDS)
            after = [store.add(f"beat/{r}", 0) for r in range(self.size)]
        except dist.DistError:  # the store is unreachable
            return None
        return [r for r in range(self.size) if r != self.rank and after[r] == before[r]]

    def _heartbeat(self) -> None:
        try:
            store = self._client(timeout=10.0)
            while self._beating.is_set():
                store.add(f"beat/{self.rank}", 1)
                time.sleep(HEARTBEAT_SECONDS)
        except Exception:  # the store went away: lost_ranks() will say so
            return

    def _client(self, timeout: float) -> Any:
        """A connection of our own to the launcher's store, keyed by torchrun's restart attempt."""
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout),
        )
        return dist.PrefixStore(f"trainer/heartbeat_{_attempt()}/", store)

    def close(self) -> None:
        self._beating.clear()
        if self._heart is not None:  # its store client must not outlive the interpreter's C++ teardown
            self._heart.join(timeout=10 * HEARTBEAT_SECONDS)
        if self.distributed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if dist.is_initialized():
                dist.destroy_process_group()


def init_world(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a world of one otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world = World(rank, size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device)
    if size == 1:
        return world
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={size} but {' and '.join(missing)} unset: start the run with torchrun "
            "(or srun with the variables torchrun would set)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, size, timeout),
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(seconds=timeout),
            device_id=device if device.type == "cuda" else None,
        )
        world._control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    except Exception as error:
        raise DistributedError(
            f"rank {rank} of {size} could not join the process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout:.0f} s: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    world._beating.set()
    world._heart = threading.Thread(target=world._heartbeat, name="trainer-heartbeat", daemon=True)
    world._heart.start()
    signal.signal(signal.SIGTERM, _raise_stopped)
    return world


def _attempt_store(rank: int, size: int, timeout: float) -> Any:
    """The rendezvous store, under a prefix of torchrun's restart attempt.

    torchrun's agent hosts the store and keeps it across `--max-restarts`: without the prefix a
    restarted worker could read the dead workers' gloo addresses and fail (or hang) connecting.
    Without torchrun's agent, rank 0 hosts it.
    """
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=rank == 0 and not agent_hosts,
        timeout=datetime.timedelta(seconds=timeout),
    )
    return dist.PrefixStore(f"trainer/attempt_{_attempt()}/", store)


def _attempt() -> str:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


def _raise_stopped(signum: int, frame: Any) -> None:
    """The first SIGTERM stops the step; later ones (torchrun repeats it) wait for our message."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stopped("stopped by the launcher (SIGTERM)")


def _is_collective_error(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        hint in text for hint in ("gloo", "nccl", "connection", "timed out", "timeout", "peer")
    )


def _lost_message(rank: int, lost: list[int] | None, error: BaseException) -> str:
    cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if lost is None:
        who = "lost rank 0's rendezvous store (rank 0 or its launcher is gone)"
    elif lost:
        who = f"lost rank {', '.join(map(str, lost))} (no heartbeat)"
    else:
        who = "a collective failed though every rank still beats"
    return (
        f"rank {rank}: {who}; stopping ({cause}). Re-run the same command to resume from the last checkpoint"
    )


def _buckets(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive tensors of one dtype and device, about _BUCKET_BYTES per bucket."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and (
            size >= _BUCKET_BYTES or (tensor.dtype, tensor.device) != (bucket[0].dtype, bucket[0].device)
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
    if bucket:
        yield bucket


def shard_share(shards: Sequence[str], rank: int, world_size: int, worker: int, workers: int) -> list[str]:
    """The shards of loader `worker` (of `workers`) on `rank`: every G-th shard from its global index
    g = rank·workers + worker, G = world_size·workers. Disjoint, together all shards; for a world of
    one it is the single-process split (shards[worker::workers])."""
    per_rank = max(1, workers)
    return list(shards[rank * per_rank + worker :: world_size * per_rank])


def local_rank() -> int | None:
    """This process's index on its machine when a launcher set it (picks its GPU), else None."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else None


def loader_workers(requested: int, num_shards: int, world: World) -> int:
    """Loader workers per rank such that every worker of every rank has a shard of its own."""
    world_size = world.size
    if num_shards < world_size:
        raise DistributedError(
            f"{num_shards} shards cannot feed {world_size} processes: each process needs one shard "
            "at least; use fewer processes or split the data into more shards"
        )
    workers = max(0, min(requested, num_shards // world_size))
    if workers < requested and world.distributed:  # one process caps its workers quietly, as before
        world.log(
            f"warning: {num_shards} shards < {world_size} process(es) x {requested} loader workers; "
            f"each process runs {workers} (a worker needs shards of its own)"
        )
    return workers


def pack_positions(positions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The data position every rank reached, for the checkpoint (a world of one keeps its own layout)."""
    if len(positions) == 1:
        return positions[0]
    return {"world_size": len(positions), "ranks": list(positions)}


def unpack_position(data: dict[str, Any], world: World) -> dict[str, Any]:
    """This rank's data position from a checkpoint; refuses another world size (positions are per rank)."""
    saved = int(data.get("world_size", 1))
    if saved != world.size:
        raise DistributedError(
            f"the run was trained by {saved} process{'es' if saved > 1 else ''} and this resume has "
            f"{world.size}; each process's data position is its own, so resume with {saved} "
            "(torchrun --nnodes x --nproc_per_node)"
        )
    return data["ranks"][world.rank] if saved > 1 else data
