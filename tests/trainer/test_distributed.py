"""Data-parallel training is exact to one large batch: 2 processes x B/2, and K micro-batches of B/K,
give the loss and the weights of one process stepping on B (fp32, gloo on loopback)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from tests.trainer.test_train import _heldout
from trainer import train
from trainer.checkpoint import completed_steps, step_dir
from trainer.data import Batch, DataCursor, ReinforcedStream, in_worker_order, list_shards, make_loader
from trainer.distributed import (
    DistributedError,
    World,
    init_world,
    loader_workers,
    shard_share,
    unpack_position,
)
from trainer.objectives import plain_objective, reinforced_objective
from trainer.optim import build_optimizer
from trainer.precision import TrainingWeights
from trainer.raw_data import PairBatch
from trainer.settings import resolve_data_settings
from trainer.step import ONE_PROCESS, train_step
from trainer.students import create_student

SETTINGS = resolve_data_settings(None, teacher_dims=(8, 12), kd_logit_scales=(100.0, 50.0))
BATCH, STEPS = 8, 3
FLAGS = ["--teacher-dims", "8,12", "--kd-logit-scales", "100,50", "--threads", "1", "--device", "cpu"]
# Two processes (or micro-batches) sum the same products in another order: float32 rounding, which
# AdamW's normalised update can lift to a small fraction of the learning rate (1e-3) on parameters
# whose gradient is only rounding noise (attention key biases).
LOSS_TOLERANCE = 1e-5  # relative: a few float32 ulps of a loss near 3 (2e-6 apart seen in a full run)
WEIGHT_TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rows(batch: Any, lo: int, hi: int) -> Any:
    """Samples lo..hi of a batch (every tensor field sliced alike)."""
    tensors = {
        f.name: value[lo:hi]
        for f in dataclasses.fields(batch)
        if isinstance(value := getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, keys=batch.keys[lo:hi], **tensors)


def _pairs(batch: Batch) -> PairBatch:
    """The batch's images with their original captions: what plain mode trains on."""
    return PairBatch(batch.keys, batch.images, batch.original_tokens, batch.worker, batch.position, {}, 0.0)


def _train(mode: str, steps: Sequence[Sequence[Any]], world: Any = ONE_PROCESS) -> tuple[list, dict]:
    """A tiny student stepped on `steps` (each a list of micro-batches); its loss terms and weights."""
    torch.set_num_threads(1)
    student = create_student("tiny", seed=0)
    weights = TrainingWeights(student.model, "fp32")
    optimizer = build_optimizer(weights.named_parameters(), 1e-3, 0.2, (0.9, 0.95))
    objective = reinforced_objective(SETTINGS.slices, lam=0.5) if mode == "reinforced" else plain_objective()
    student.model.train()
    losses = []
    for micro_batches in steps:
        batches = micro_batches if mode == "reinforced" else [_pairs(b) for b in micro_batches]
        terms, _ = train_step(student, weights, optimizer, batches, objective, 1.0, world)
        losses.append(terms)
    return losses, weights.state_dict()


def _assert_same(a: tuple[list, dict], b: tuple[list, dict]) -> None:
    for terms_a, terms_b in zip(a[0], b[0], strict=True):
        assert terms_a.keys() == terms_b.keys()
        for name in terms_a:
            assert terms_a[name] == pytest.approx(terms_b[name], rel=LOSS_TOLERANCE), name
    for name, tensor in a[1].items():
        assert (tensor - b[1][name]).abs().max() <= WEIGHT_TOLERANCE, name
    moved = create_student("tiny", seed=0).model.state_dict()
    assert any(not torch.equal(moved[k], a[1][k]) for k in moved)  # the steps did change the weights


def _stream(paths: list[str], batch_size: int, **options: Any) -> ReinforcedStream:
    """The tiny student's stream over `paths` (options: epochs, rank, world_size, start, ...)."""
    student = create_student("tiny", seed=0)
    return ReinforcedStream(
        paths,
        SETTINGS,
        image_size=student.image_size,
        tokenizer=student.tokenizer,
        batch_size=batch_size,
        **options,
    )


@pytest.fixture
def batches(make_shards: Callable[..., Any]) -> list[Batch]:
    folder, _ = make_shards(shards=2, per_shard=12)
    stream = _stream(list_shards([str(folder / "*.tar")]), BATCH)
    loader = in_worker_order(iter(make_loader(stream, 0)), 0)
    return [next(loader) for _ in range(STEPS)]


def test_two_micro_batches_step_exactly_as_one_double_batch(batches: list[Batch]) -> None:
    half = BATCH // 2
    for mode in ("reinforced", "plain"):
        whole = _train(mode, [[b] for b in batches])
        accumulated = _train(mode, [[_rows(b, 0, half), _rows(b, half, BATCH)] for b in batches])
        _assert_same(whole, accumulated)


def _rank_main(rank: int, port: int, batches_path: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        GLOO_SOCKET_IFNAME="lo",
    )
    batches = torch.load(batches_path, weights_only=False)
    world = init_world(torch.device("cpu"), timeout=60)
    half, quarter = BATCH // 2, BATCH // 4
    lo = rank * half
    try:
        results = {
            mode: _train(mode, [[_rows(b, lo, lo + half)] for b in batches], world)
            for mode in ("reinforced", "plain")
        }
        results["accumulated"] = _train(
            "reinforced",
            [[_rows(b, lo, lo + quarter), _rows(b, lo + quarter, lo + half)] for b in batches],
            world,
        )
    finally:
        world.close()
    torch.save(results, Path(out) / f"rank{rank}.pt")


def run_ranks(target: Callable[..., None], args: tuple, timeout: float = 180) -> None:
    """Start two spawned processes running target(rank, *args); fail (and kill them) after `timeout`."""
    context = mp.start_processes(target, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the two ranks did not finish within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@pytest.mark.slow
def test_two_processes_with_half_batches_step_exactly_as_one(batches: list[Batch], tmp_path: Path) -> None:
    torch.save(batches, tmp_path / "batches.pt")
    run_ranks(_rank_main, (free_port(), str(tmp_path / "batches.pt"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for mode in ("reinforced", "plain"):
        one = _train(mode, [[b] for b in batches])
        for result in ranks:
            _assert_same(one, result[mode])
    # 2 processes x 2 micro-batches x B/4 is the same single batch of B too.
    _assert_same(_train("reinforced", [[b] for b in batches]), ranks[0]["accumulated"])
    assert all(
        torch.equal(ranks[0]["reinforced"][1][k], ranks[1]["reinforced"][1][k])
        for k in ranks[0]["reinforced"][1]
    )


@pytest.mark.parametrize("shards, workers", [(4, 2), (5, 2), (3, 0)])
def test_over_one_epoch_every_sample_is_read_once_across_ranks(
    make_shards: Callable[..., Any], shards: int, workers: int
) -> None:
    folder, samples = make_shards(shards=shards, per_shard=3)
    paths = list_shards([str(folder / "*.tar")])
    seen: list[str] = []
    for rank in range(2):
        stream = _stream(paths, 2, epochs=1, rank=rank, world_size=2)
        seen += [key for batch in make_loader(stream, workers) for key in batch.keys]
    assert sorted(seen) == sorted(s.key for s in samples)
    shares = [shard_share(paths, r, 2, w, max(1, workers)) for r in range(2) for w in range(max(1, workers))]
    assert sorted(p for share in shares for p in share) == paths and all(shares)


def test_each_rank_resumes_its_own_stream_exactly(make_shards: Callable[..., Any]) -> None:
    folder, _ = make_shards(shards=4, per_shard=3)
    paths = list_shards([str(folder / "*.tar")])

    def batches(cursor: DataCursor, count: int) -> list[Batch]:
        stream = _stream(
            paths, 2, shuffle_buffer=4, start=cursor.positions, skipped=cursor.skipped, rank=1, world_size=2
        )
        loader = in_worker_order(iter(make_loader(stream, 0)), 0, cursor.next_worker)
        return [next(loader) for _ in range(count)]

    whole = batches(DataCursor.fresh(0), 6)  # past the end of rank 1's first epoch (6 samples)
    cursor = DataCursor.fresh(0)
    for batch in whole[:4]:
        cursor.advance(batch)
    resumed = batches(DataCursor.from_json(json.loads(json.dumps(cursor.to_json()))), 2)
    assert [b.keys for b in resumed] == [b.keys for b in whole[4:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, whole[4:], strict=True))


def test_the_command_steps_on_k_micro_batches_and_reports_the_global_batch(
    make_shards: Callable[..., Any], tmp_path: Path
) -> None:
    folder, _ = make_shards(shards=1, per_shard=8)
    run = tmp_path / "run"
    argv = ["--data", str(folder / "*.tar"), "--model", "tiny", "--steps", "2", "--batch-size", "3"]
    summary = train.train(
        train.parse_args([*argv, "--accum-steps", "2", "--workers", "0", "--output", str(run), *FLAGS])
    )
    assert summary is not None and summary["world_size"] == 1 and summary["global_batch"] == 6
    state = json.loads((Path(step_dir(str(run), 2)) / "state.json").read_text())
    assert state["data"]["batches"] == 4 and state["run"]["accum_steps"] == 2


def test_a_resume_with_another_world_size_is_refused_with_the_size_to_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    two_ranks = {"world_size": 2, "ranks": [{"workers": 0}, {"workers": 0}]}
    assert unpack_position(two_ranks, World(rank=1, size=2)) == {"workers": 0}
    with pytest.raises(DistributedError, match=r"trained by 2 processes .* resume with 2"):
        unpack_position(two_ranks, World())
    with pytest.raises(DistributedError, match="trained by 1 process and this resume has 2"):
        unpack_position({"workers": 0}, World(rank=0, size=2))
    with pytest.raises(DistributedError, match="3 shards cannot feed 4 processes"):
        loader_workers(2, 3, World(rank=0, size=4))
    assert loader_workers(2, 3, World(rank=0, size=2)) == 1
    assert "3 shards < 2 process(es) x 2 loader workers" in capsys.readouterr().err


# -- the command under torchrun ---------------------------------------------------------------------


def torchrun(launcher: list[str], trainer: list[str], stderr: Path) -> subprocess.Popen:
    """`python -m torch.distributed.run LAUNCHER -m trainer.train TRAINER`, loopback only."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "trainer.train", *trainer]
    with stderr.open("w") as err:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker with RANK=`rank` among the launcher's children."""
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"PPid:\t{launcher_pid}\n" in status and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no rank {rank} under {launcher_pid}")


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > seconds:
            raise AssertionError(f"{what} not within {seconds} s")
        time.sleep(0.2)
    return time.monotonic() - began


@pytest.mark.slow
def test_a_killed_rank_is_named_by_the_other_and_a_restart_resumes(
    make_shards: Callable[..., Any], tmp_path: Path
) -> None:
    folder, _ = make_shards(shards=2, per_shard=8)
    heldout = _heldout(tmp_path / "heldout")
    run, err = tmp_path / "run", tmp_path / "stderr.txt"
    launcher = ["--nproc_per_node", "2", "--max-restarts", "1"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    trainer = ["--data", str(folder / "*.tar"), "--model", "tiny", "--steps", "30", "--batch-size", "2"]
    trainer += ["--workers", "0", "--checkpoint-every", "4", "--output", str(run), *FLAGS]
    trainer += ["--eval-data", str(heldout / "*.tar"), "--eval-every", "10"]  # rank 0 evaluates
    proc = torchrun(launcher, trainer, err)
    try:
        first = Path(step_dir(str(run), 4)) / "state.json"
        _wait_for(first.exists, 180, "the first checkpoint")
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        seconds = _wait_for(lambda: "lost rank 1" in err.read_text(), 60, "rank 0 naming rank 1")
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    text = err.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "error: rank 0: lost rank 1" in text and seconds < 60
    assert re.search(r"resuming .* from step (4|8|12|16|20|24|28)", text), text[-3000:]
    summary = json.loads(out.splitlines()[-1])
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["eval"]["step"] == 30 and summary["eval"]["num_images"] == 12
    assert completed_steps(str(run))[-1] == 30
    log = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == list(range(30))  # the steps after the checkpoint were redone, once


@pytest.mark.slow
def test_two_machines_on_loopback_train_a_mobileclip2_s0_student(
    make_shards: Callable[..., Any], tmp_path: Path
) -> None:
    folder, _ = make_shards(shards=2, per_shard=4)
    run = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    trainer = ["--data", str(folder / "*.tar"), "--model", "MobileCLIP2-S0", "--steps", "2"]
    trainer += ["--batch-size", "2", "--workers", "0", "--output", str(run), *FLAGS]
    agents = [
        torchrun(
            ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
             "--rdzv-id", "loopback", "--local-addr", "127.0.0.1"],
            trainer,
            tmp_path / f"agent{node}.txt",
        )
        for node in range(2)
    ]  # fmt: skip
    try:
        outs = [agent.communicate(timeout=300)[0] for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for node, agent in enumerate(agents):
        assert agent.returncode == 0, (tmp_path / f"agent{node}.txt").read_text()[-3000:]
    summaries = [json.loads(out.splitlines()[-1]) for out in outs if out.strip()]
    assert len(summaries) == 1  # rank 0 reports for both
    assert summaries[0]["world_size"] == 2 and summaries[0]["global_batch"] == 4
    assert summaries[0]["steps"] == 2 and completed_steps(str(run)) == [2]
