"""Training throughput on CPU and the share of step time spent waiting for data, measured in one run.

Shards like DataCompDR-1B's (10 views, 5 synthetic captions, two 768-wide teachers, fp32 npz, real
photos at DataComp's <= 512 px) are built in a temporary folder; then each configuration trains a
few steps through the trainer's own stream, loader and step (`trainer.data`, `trainer.train`),
after warm-up steps that are not timed. Reported per configuration: samples/s, the share of step
time the step waited for a batch ("data wait share": the target is < 20 % with the default number
of loader workers), and the replay share (worker time to read, decode and replay a batch divided by
step time: what the wait would be with no workers at all).

Data-parallel scaling: the same student trained by 1 and by 2 processes (torchrun's environment,
gloo on loopback, one torch thread and no loader worker each, per-process batch fixed), timed from
a barrier after warm-up to a barrier after the last step, in alternating rounds; `ddp_scaling` is
the best 2-process samples/s over the best 1-process one. The student is MobileCLIP2-S0 in fp32:
a step of 8 samples is seconds of compute against a 0.3 GB gradient all-reduce (75 M parameters;
about 1.4 s on this machine under load), so compute, not communication, dominates, as it does for
a real student on real devices.

The machine is shared with other jobs, so absolute numbers are noisy; the ratios are more stable
(`ddp_scaling` needs two otherwise idle cores). Last line: one JSON object.

    python -m bench.trainer [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
import torch
import torch.multiprocessing as mp
from PIL import Image

from shards.reinforced import ReinforcedSample, write_shard
from trainer import train
from trainer.data import DEFAULT_WORKERS, ReinforcedStream, in_worker_order, list_shards, make_loader
from trainer.distributed import World, init_world
from trainer.objectives import reinforced_objective
from trainer.optim import build_optimizer
from trainer.precision import TrainingWeights
from trainer.settings import resolve_data_settings
from trainer.step import train_step
from trainer.students import Student, create_student
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image, encode_param_aug, view_rng

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick", "grass", "gravel", "cell")
DIMS, SCALES = (768, 768), (100.0, 100.0)
VIEWS, CAPTIONS = 10, 5


def _photo_jpegs() -> list[bytes]:
    """Real photos, resized as DataComp's downloader does (longer side at most 512 px), as JPEG."""
    out = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((512, 512), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    parts = [rng.standard_normal((rows, d)).astype(np.float32) for d in DIMS]
    return np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], axis=1)


def build_data(folder: Path, shards: int, per_shard: int) -> str:
    augmenter = ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION)
    photos = _photo_jpegs()
    for shard in range(shards):
        samples = []
        for i in range(per_shard):
            index = shard * per_shard + i
            uid = f"{index:032x}"
            image = photos[index % len(photos)]
            size = decode_image(image).size
            rng = np.random.default_rng(index)
            samples.append(
                ReinforcedSample(
                    key=uid,
                    image=image,
                    caption=f"a photo of {PHOTOS[index % len(PHOTOS)]}, number {index}",
                    meta={"uid": uid},
                    param_aug=[
                        encode_param_aug(augmenter.sample(view_rng(0, uid, k), size)) for k in range(VIEWS)
                    ],
                    image_emb=_unit_rows(rng, VIEWS),
                    caption_emb=_unit_rows(rng, 1)[0],
                    syn_captions={
                        "syn_text": [
                            f"a picture of {PHOTOS[index % len(PHOTOS)]} {k}" for k in range(CAPTIONS)
                        ]
                    },
                    syn_emb={"syn_text": _unit_rows(rng, CAPTIONS)},
                )
            )
        write_shard(str(folder / f"{shard:08d}.tar"), samples)
    return str(folder / "*.tar")


def measure(
    pattern: str, model: str, precision: str, batch_size: int, workers: int, warmup: int, steps: int
) -> dict[str, Any]:
    """Train `warmup + steps` steps through the trainer's own pieces; time the last `steps`."""
    settings = resolve_data_settings(None, teacher_dims=DIMS, kd_logit_scales=SCALES)
    torch.set_num_threads(train.step_threads(workers))
    student = create_student(model, seed=0)
    weights = TrainingWeights(student.model, precision)
    optimizer = build_optimizer(weights.named_parameters(), 1e-4, 0.2, (0.9, 0.95))
    shards = list_shards([pattern])
    stream = ReinforcedStream(
        shards, settings, image_size=student.image_size, tokenizer=student.tokenizer, batch_size=batch_size
    )
    loader = in_worker_order(iter(make_loader(stream, workers)), workers)
    objective = reinforced_objective(settings.slices, lam=1.0)
    student.model.train()
    step_seconds, wait_seconds, replay_seconds = [], [], []
    try:
        for step in range(warmup + steps):
            began = time.perf_counter()
            batch = next(loader)
            waited = time.perf_counter() - began
            train_step(student, weights, optimizer, [batch], objective, grad_clip=1.0)
            if step >= warmup:
                step_seconds.append(time.perf_counter() - began)
                wait_seconds.append(waited)
                replay_seconds.append(batch.produce_seconds)
    finally:
        del loader
    total = sum(step_seconds)
    return {
        "model": model,
        "precision": precision,
        "image_size": student.image_size,
        "batch_size": batch_size,
        "workers": workers,
        "step_threads": torch.get_num_threads(),
        "timed_steps": steps,
        "samples_per_s": round(batch_size * steps / total, 2),
        "seconds_per_step": round(total / steps, 3),
        "data_wait_share": round(sum(wait_seconds) / total, 3),
        "replay_share": round(sum(replay_seconds) / total, 3),
    }


DDP_MODEL, DDP_BATCH = "MobileCLIP2-S0", 8
DDP_ROUNDS = 2  # each world size is measured this often, alternating; the best round counts


def _ddp_rank(rank: int, processes: int, port: int, pattern: str, warmup: int, steps: int, out: str) -> None:
    """One rank of the scaling measurement, in the environment torchrun would give it."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(processes),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(processes),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    world = init_world(torch.device("cpu"))
    try:
        settings = resolve_data_settings(None, teacher_dims=DIMS, kd_logit_scales=SCALES)
        student = create_student(DDP_MODEL, seed=0)
        weights = TrainingWeights(student.model, "fp32")
        optimizer = build_optimizer(weights.named_parameters(), 1e-4, 0.2, (0.9, 0.95))
        stream = ReinforcedStream(
            list_shards([pattern]),
            settings,
            image_size=student.image_size,
            tokenizer=student.tokenizer,
            batch_size=DDP_BATCH,
            rank=rank,
            world_size=processes,
        )
        loader = iter(make_loader(stream, 0))
        objective = reinforced_objective(settings.slices, lam=1.0)
        student.model.train()
        seconds = _timed_steps(student, weights, optimizer, loader, objective, world, warmup, steps)
    finally:
        world.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds}))


def _timed_steps(
    student: Student,
    weights: TrainingWeights,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    objective: Any,
    world: World,
    warmup: int,
    steps: int,
) -> float:
    for _ in range(warmup):
        train_step(student, weights, optimizer, [next(loader)], objective, 1.0, world)
    world.barrier()
    began = time.perf_counter()
    for _ in range(steps):
        train_step(student, weights, optimizer, [next(loader)], objective, 1.0, world)
    world.barrier()
    return time.perf_counter() - began


def measure_ddp(pattern: str, processes: int, warmup: int, steps: int) -> dict[str, Any]:
    """Samples/s of DDP_MODEL trained by `processes` ranks of one thread each (gloo, loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        out = str(Path(scratch) / "result.json")
        mp.start_processes(
            _ddp_rank,
            args=(processes, port, pattern, warmup, steps, out),
            nprocs=processes,
            start_method="spawn",
        )
        seconds = json.loads(Path(out).read_text())["seconds"]
    return {
        "model": DDP_MODEL,
        "processes": processes,
        "batch_per_process": DDP_BATCH,
        "timed_steps": steps,
        "samples_per_s": round(processes * DDP_BATCH * steps / seconds, 2),
        "seconds_per_step": round(seconds / steps, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, noisier numbers)")
    parser.add_argument("--ddp-only", action="store_true", help="only the data-parallel scaling case")
    args = parser.parse_args(argv)
    quick = args.quick
    configs = [
        # model, precision, batch, workers, warm-up, timed steps
        ("tiny", "fp32", 32, DEFAULT_WORKERS, 3, 8 if quick else 30),
        ("tiny", "fp32", 32, 0, 2, 4 if quick else 10),
        ("MobileCLIP2-S0", "fp32", 16, DEFAULT_WORKERS, 2, 2 if quick else 5),
        ("MobileCLIP2-S0", "bf16", 16, DEFAULT_WORKERS, 2, 2 if quick else 5),
    ]
    results: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        pattern = build_data(Path(scratch), shards=4, per_shard=24)
        for model, precision, batch, workers, warmup, steps in [] if args.ddp_only else configs:
            result = measure(pattern, model, precision, batch, workers, warmup, steps)
            results.append(result)
            print(
                f"{model:15s} {precision:5s} batch {batch:3d} workers {workers}: "
                f"{result['samples_per_s']:7.2f} samples/s, {result['seconds_per_step']:.3f} s/step, "
                f"data wait {100 * result['data_wait_share']:5.1f} %, "
                f"replay {100 * result['replay_share']:6.1f} %",
                flush=True,
            )
        for processes in (1, 2) * (1 if quick else DDP_ROUNDS):  # alternated: load changes over time
            result = measure_ddp(pattern, processes, warmup=1, steps=2 if quick else 3)
            scaling.append(result)
            print(
                f"{DDP_MODEL} fp32 batch {DDP_BATCH} per process, {processes} process(es) x 1 thread: "
                f"{result['samples_per_s']:7.2f} samples/s, {result['seconds_per_step']:.3f} s/step",
                flush=True,
            )
    best = {n: max(r["samples_per_s"] for r in scaling if r["processes"] == n) for n in (1, 2)}
    summary: dict[str, Any] = {
        "cpu_cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **_single_process_summary(results),
        "ddp_model": f"{DDP_MODEL} fp32, batch {DDP_BATCH} per process",
        "ddp_1_process_samples_per_s": best[1],
        "ddp_2_processes_samples_per_s": best[2],
        "ddp_scaling": round(best[2] / best[1], 2),
        "runs": results + scaling,
    }
    print(json.dumps(summary))


def _single_process_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        return {}
    by = {(r["model"], r["precision"], r["workers"]): r for r in results}
    mc_fp32, mc_bf16 = (
        by[("MobileCLIP2-S0", "fp32", DEFAULT_WORKERS)],
        by[("MobileCLIP2-S0", "bf16", DEFAULT_WORKERS)],
    )
    return {
        "tiny_samples_per_s": by[("tiny", "fp32", DEFAULT_WORKERS)]["samples_per_s"],
        "tiny_data_wait_share": by[("tiny", "fp32", DEFAULT_WORKERS)]["data_wait_share"],
        "tiny_no_workers_data_share": by[("tiny", "fp32", 0)]["data_wait_share"],
        "mobileclip2_s0_fp32_samples_per_s": mc_fp32["samples_per_s"],
        "mobileclip2_s0_bf16_samples_per_s": mc_bf16["samples_per_s"],
        "mobileclip2_s0_bf16_speedup": round(mc_bf16["samples_per_s"] / mc_fp32["samples_per_s"], 2),
        "mobileclip2_s0_data_wait_share": mc_fp32["data_wait_share"],
        "mobileclip2_s0_replay_share": mc_fp32["replay_share"],
        "default_workers": DEFAULT_WORKERS,
    }


if __name__ == "__main__":
    main()
