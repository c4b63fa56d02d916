"""Train a CLIP student on reinforced shards with the loss of contract §5 (or on raw shards).

    python -m trainer.train --data 'OUT/*.tar' --model MobileCLIP2-S0 --steps 30000 --batch-size 256 \
        [--lambda 1.0] [--config OUT/config.json] --output RUN

`--mode plain` trains on raw img2dataset shards with the standard CLIP loss and an on-the-fly
RandomResizedCrop (the baseline); `--mode coca` does the same with a CoCa model and adds its
captioning loss (fine-tunes a captioner on your own captions).

Running the same command again on the same RUN folder resumes from its last checkpoint and continues
the same run: same weights, optimizer state, schedule and data position, so the result equals an
uninterrupted run's. RUN gets `log.jsonl` (one record per step), `loss.png`, `train_config.json`,
`checkpoints/step_N/` (an open_clip `local-dir:` folder plus optimizer state) and `eval.jsonl`.

Under `torchrun --nproc_per_node N -m trainer.train ...` the same command trains data-parallel
(`trainer.distributed`): `--batch-size` is per process, the loss is taken over the global batch of
processes x `--accum-steps` x batch size (`trainer.step`), and rank 0 writes RUN.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.scores import read_columns
from shards.storage import parse_known_beam_args
from shards.teacher_slices import parse_teacher_dims
from shards.write_guard import OutputRefused, check_output_folder
from teachers.devices import (
    DEVICE_HELP,
    DeviceError,
    device_facts,
    host_to_device,
    parse_device,
    resolve_device,
)
from trainer import checkpoint as ckpt
from trainer.data import (
    DEFAULT_SHUFFLE_BUFFER,
    DEFAULT_WORKERS,
    Batch,
    DataCursor,
    DataError,
    ReinforcedStream,
    ShardStream,
    in_worker_order,
    list_shards,
    make_loader,
    probe,
)
from trainer.distributed import (
    DEFAULT_TIMEOUT,
    DistributedError,
    World,
    init_world,
    loader_workers,
    local_rank,
    pack_positions,
    unpack_position,
)
from trainer.evaluate import evaluate_on
from trainer.loss import FAMILIES
from trainer.objectives import (
    COCA,
    DEFAULT_CAPTION_LOSS_WEIGHT,
    MODES,
    REINFORCED,
    Objective,
    coca_objective,
    plain_objective,
    reinforced_objective,
)
from trainer.optim import build_optimizer, learning_rate, set_learning_rate
from trainer.plot import CURVES, plot_losses, read_log, write_log
from trainer.precision import PRECISIONS, TrainingWeights
from trainer.raw_data import DEFAULT_CROP_SCALE, PairBatch, RawPairStream
from trainer.settings import (
    DataSettings,
    SettingsError,
    load_run_config,
    parse_caption_families,
    resolve_data_settings,
    sibling_config,
)
from trainer.step import train_step
from trainer.students import Student, StudentError, create_student
from transforms.fingerprint import image_stack

LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.jsonl"
PLOT_FILE = "loss.png"
TRAIN_CONFIG_FILE = "train_config.json"
# Settings that define a run: resuming with any of them changed would not continue the same run.
RUN_KEYS = (
    "mode",
    "families",
    "crop_scale",
    "caption_loss_weight",
    "model",
    "pretrained",
    "steps",
    "batch_size",
    "accum_steps",
    "world_size",
    "lam",
    "lr",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "warmup",
    "grad_clip",
    "precision",
    "seed",
    "shuffle_buffer",
    "keep_uids",
    "distil_from",
)
# What a run from before these settings existed had (its checkpoints resume as such).
RUN_KEY_DEFAULTS = {"accum_steps": 1, "world_size": 1, "distil_from": None}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Our flags; any others must be Beam filesystem options (`--s3_endpoint_url ...`, `--project ...`)."""
    p = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, nargs="+", help="reinforced (or, plain/coca: raw) shard patterns")
    p.add_argument(
        "--mode",
        choices=MODES,
        default=REINFORCED,
        help="reinforced: contract §5 on reinforced shards; plain: CLIP loss on raw shards; "
        "coca: CLIP + captioning loss on raw shards (a CoCa model)",
    )
    p.add_argument(
        "--model", required=True, help="tiny, an open_clip name (MobileCLIP2-S0, ...) or local-dir:"
    )
    p.add_argument("--pretrained", default=None, help="start from this pretrained tag (needs the hub)")
    p.add_argument(
        "--output",
        required=True,
        help="run folder (new, empty, or a run of ours, which is resumed); never a file",
    )
    p.add_argument("--steps", type=int, required=True, help="optimizer steps of the whole run")
    p.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="per process and micro-batch (each loader worker fills whole batches)",
    )
    p.add_argument(
        "--accum-steps",
        type=int,
        default=1,
        help="micro-batches per step, exact to a K-times larger batch (global batch: processes x K x B)",
    )
    p.add_argument(
        "--lambda", dest="lam", type=float, default=1.0, help="KD weight λ (contract §5); default %(default)s"
    )
    p.add_argument(
        "--families",
        type=_families,
        default=FAMILIES,
        help="which caption terms the reinforced loss has: original (the alt-text), synthetic (a caption "
        "drawn from --caption-families) or original,synthetic (default)",
    )
    p.add_argument(
        "--crop-scale",
        type=_crop_scale,
        default=DEFAULT_CROP_SCALE,
        help="plain/coca: RandomResizedCrop area range, e.g. 0.9,1.0 (open_clip's default)",
    )
    p.add_argument(
        "--caption-loss-weight",
        type=float,
        default=DEFAULT_CAPTION_LOSS_WEIGHT,
        help="coca: weight of the captioning loss (contrastive weight 1)",
    )
    p.add_argument(
        "--config", default=None, help="the reinforcement run's config.json (default: beside the data)"
    )
    p.add_argument(
        "--keep-uids",
        metavar="PARQUET",
        default=None,
        help="train only on the samples whose uid this parquet's `uid` column lists (e.g. a pandas or "
        "DuckDB query over the shards' parquet scores)",
    )
    p.add_argument(
        "--teacher-dims", type=parse_teacher_dims, default=None, help="e.g. 768,768; overrides the config"
    )
    p.add_argument("--kd-logit-scales", type=_floats, default=None, help="e.g. 100,100; overrides the config")
    p.add_argument(
        "--distil-from",
        type=_indices,
        default=None,
        help="KD from these teachers only, by position in the config's teacher list (e.g. 0; default: "
        "the whole ensemble): the single-teacher ablation",
    )
    p.add_argument(
        "--caption-families",
        type=parse_caption_families,
        default=None,
        help="where the synthetic term's captions come from: families such as syn_text_coca,syn_text_blip, "
        "or all (default: every family the data has, pooled); needs synthetic in --families",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.2, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 (default %(default)s)")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2 (default %(default)s)")
    p.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon (default %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: min(1000, steps/10))")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables clipping")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bf16 weights, fp32 master (fast on CPU); amp_bf16: bf16 autocast (for GPUs)",
    )
    p.add_argument("--device", type=parse_device, default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="torchrun: seconds a step waits for the others before the run stops (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the data order (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="loader processes per training process (capped so that each has shards of its own)",
    )
    p.add_argument("--shuffle-buffer", type=int, default=DEFAULT_SHUFFLE_BUFFER, help="samples per worker")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="save RUN/checkpoints/step_N every N steps, and at the end (default %(default)s)",
    )
    p.add_argument(
        "--keep-checkpoints", type=int, default=2, help="latest checkpoints kept (default %(default)s)"
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="print progress every N steps (log.jsonl and loss.png are written with each checkpoint)",
    )
    p.add_argument("--eval-data", nargs="+", default=None, help="held-out shards for retrieval/zero-shot")
    p.add_argument(
        "--eval-every", type=int, default=0, help="also evaluate every N steps (0: only at the end)"
    )
    p.add_argument(
        "--classnames", default=None, help="eval: one class name per line (default: beside the data)"
    )
    p.add_argument("--templates", default=None, help="eval: prompt templates with {c} (default: CLIP's)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the step (0: the cores the workers leave, >= 1)",
    )
    args = parse_known_beam_args(p, argv)
    if args.warmup is None:
        args.warmup = min(1000, args.steps // 10)
    problems = [
        msg
        for bad, msg in (
            (args.steps < 1, "--steps must be at least 1"),
            (args.batch_size < 1, "--batch-size must be at least 1"),
            (args.accum_steps < 1, "--accum-steps must be at least 1"),
            (args.dist_timeout <= 0, "--dist-timeout must be positive"),
            (not 0.0 <= args.lam <= 1.0, "--lambda must be in [0, 1]"),
            (args.warmup < 0, "--warmup must be >= 0"),
            (args.workers < 0, "--workers must be >= 0"),
            (args.checkpoint_every < 1, "--checkpoint-every must be at least 1"),
            (
                args.caption_families is not None and "synthetic" not in args.families,
                "--caption-families picks the synthetic captions, but --families leaves them out",
            ),
        )
        if bad
    ]
    if problems:
        p.error("; ".join(problems))
    return args


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _indices(text: str) -> tuple[int, ...]:
    try:
        indices = tuple(int(part) for part in text.split(","))
    except ValueError:
        indices = ()
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise argparse.ArgumentTypeError(
            f"expected distinct teacher positions such as 0 or 0,1, got {text!r}"
        )
    return indices


def _families(text: str) -> tuple[str, ...]:
    families = tuple(f.strip() for f in text.split(",") if f.strip())
    if not families or set(families) - set(FAMILIES):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {FAMILIES}, got {text!r}")
    return tuple(f for f in FAMILIES if f in families)


def _crop_scale(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2 or not 0 < values[0] <= values[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW <= HIGH <= 1, got {text!r}")
    return values[0], values[1]


def run_identity(
    args: argparse.Namespace, shards: list[str], settings: DataSettings | None, world_size: int = 1
) -> dict[str, Any]:
    identity = {key: getattr(args, key) for key in RUN_KEYS if key != "world_size"}
    identity["world_size"] = world_size
    identity["shards"] = shards
    described = settings.describe() if settings else {}
    identity["data_settings"] = {k: v for k, v in described.items() if k != "source"}
    return json.loads(json.dumps(identity))


def step_threads(workers: int, processes: int = 1) -> int:
    """Threads for the training step: this process's share of the cores, less its loader workers,
    at least one (`processes`: training processes on this machine).

    On a busy CPU, more torch threads than free cores make every step wait on the slowest thread
    (on 2 shared cores, MobileCLIP2-S0 ran 2-4x slower with 2 threads than with 1; see bench.trainer).
    """
    return max(1, (os.cpu_count() or 1) // processes - workers)


def on_device(batch: Batch | PairBatch, device: torch.device) -> Batch | PairBatch:
    """The batch with its tensors on the step's device (images still uint8: a quarter of float32's bytes)."""
    if device.type == "cpu":
        return batch
    moved = {
        field.name: host_to_device(value, device)
        for field in dataclasses.fields(batch)
        if isinstance(value := getattr(batch, field.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **moved)


def _write_train_config(
    output: str, identity: dict[str, Any], args: argparse.Namespace, source: str | None, device: torch.device
) -> None:
    path = storage.join(output, TRAIN_CONFIG_FILE)
    payload = {"run": identity, "workers": args.workers, "data_settings_source": source, "argv": sys.argv[1:]}
    payload["device"] = device_facts(device)
    storage.write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _resume(
    args: argparse.Namespace,
    weights: TrainingWeights,
    optimizer: torch.optim.Optimizer,
    identity: dict[str, Any],
    workers: int,
    world: World,
) -> tuple[int, DataCursor]:
    steps = ckpt.completed_steps(args.output)
    seen = world.gather_objects(steps[-1] if steps else 0)
    if len(set(seen)) > 1:
        raise DistributedError(
            f"the processes see different last checkpoints in {args.output} (steps {seen} by rank): "
            "--output must be storage every machine shares (a network filesystem, gs://, s3://)"
        )
    if not steps:
        return 0, DataCursor.fresh(workers)
    folder = ckpt.step_dir(args.output, steps[-1])
    state, saved = ckpt.load_checkpoint(folder, optimizer)
    weights.load_state_dict(saved)
    run = {**RUN_KEY_DEFAULTS, **state.run}
    data_position = unpack_position(state.data, world)  # another world size: refused, by name
    differing = sorted(k for k in set(identity) | set(run) if identity.get(k) != run.get(k))
    if differing:
        raise ckpt.CheckpointError(
            f"{args.output} holds a run with different {', '.join(differing)}; "
            "resume with the same settings or pick a new --output"
        )
    cursor = DataCursor.from_json(data_position)
    if cursor.workers != workers:
        raise ckpt.CheckpointError(
            f"the run used {cursor.workers} loader workers and this resume {workers}; the data position is "
            f"per worker, so resume with --workers {cursor.workers}"
        )
    world.log(f"resuming {args.output} from step {state.step}")
    return state.step, cursor


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or resume) the run described by `args`; returns the summary printed as the last line
    (on rank 0; the other ranks of a torchrun world return None)."""
    threads = torch.get_num_threads()
    device = resolve_device(args.device, worker_index=local_rank())  # an unusable GPU fails at once
    world = init_world(device, args.dist_timeout)
    try:
        with world.watch():
            return _train(args, device, world)
    finally:
        world.close()
        torch.set_num_threads(threads)  # the step's thread count is this run's choice, not the caller's


def _objective(
    args: argparse.Namespace, shards: list[str], student: Student
) -> tuple[DataSettings | None, Objective, str]:
    """The mode's data settings (reinforced only, checked on a first sample), objective and a description."""
    if args.mode != REINFORCED:
        if args.distil_from is not None:
            raise SettingsError(f"--distil-from needs --mode {REINFORCED}: {args.mode} mode has no teachers")
        objective = coca_objective(args.caption_loss_weight) if args.mode == COCA else plain_objective()
        return None, objective, f"raw pairs, RandomResizedCrop scale {list(args.crop_scale)}"
    config_path = args.config or sibling_config(args.data[0])
    config = load_run_config(config_path) if config_path else None
    settings = resolve_data_settings(
        config,
        teacher_dims=args.teacher_dims,
        kd_logit_scales=args.kd_logit_scales,
        config_path=config_path,
        caption_families=args.caption_families,
    )
    probed = probe(shards, settings, student.tokenizer, student.image_size)
    slices = settings.slices
    if args.distil_from is not None:
        if max(args.distil_from) >= len(slices):
            raise SettingsError(
                f"--distil-from {','.join(map(str, args.distil_from))}: the data has {len(slices)} teachers "
                f"(positions 0 to {len(slices) - 1})"
            )
        slices = [slices[i] for i in args.distil_from]
    described = (
        f"teachers {list(settings.teacher_dims)} at KD scales {list(settings.kd_logit_scales)} "
        f"(from {settings.source}), loss terms {list(args.families)}, synthetic captions from "
        f"{', '.join(settings.caption_families or ['every family'])}; first sample {probed['key']} has "
        f"{probed['num_views']} views"
    )
    if args.distil_from is not None:
        described += f"; KD from teachers {[s.name for s in slices]} only"
    return settings, reinforced_objective(slices, args.lam, args.families), described


def _stream(
    args: argparse.Namespace,
    shards: list[str],
    student: Student,
    settings: DataSettings | None,
    cursor: DataCursor,
    world: World,
) -> ShardStream:
    common: dict[str, Any] = {
        "rank": world.rank,
        "world_size": world.size,
        "image_size": student.image_size,
        "tokenizer": student.tokenizer,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "shuffle_buffer": args.shuffle_buffer,
        "start": cursor.positions,
        "skipped": cursor.skipped,
        "keep_uids": _keep_uids(args.keep_uids),
    }
    if settings is None:
        interpolation = student.preprocess_cfg.get("interpolation") or "bicubic"
        return RawPairStream(shards, crop_scale=args.crop_scale, interpolation=interpolation, **common)
    return ReinforcedStream(shards, settings, **common)


def _keep_uids(path: str | None) -> frozenset[str] | None:
    """The uids `--keep-uids` names; None trains on every sample."""
    if path is None:
        return None
    try:
        return frozenset(str(uid) for uid in read_columns(path, ["uid"]).column("uid").to_pylist())
    except (OSError, ValueError) as error:
        raise DataError(f"--keep-uids {path}: {error}") from error


def _train(args: argparse.Namespace, device: torch.device, world: World) -> dict[str, Any] | None:
    shards = list_shards(args.data)
    student = create_student(args.model, pretrained=args.pretrained, seed=args.seed)
    student.model.to(device)  # before TrainingWeights, which keeps its fp32 master copy beside the model
    world.broadcast_module(student.model)
    weights = TrainingWeights(student.model, args.precision)
    student.autocast_bf16 = args.precision == "amp_bf16"
    workers = loader_workers(args.workers, len(shards), world)
    settings, objective, described = _objective(args, shards, student)
    torch.set_num_threads(args.threads or step_threads(workers, world.local_size))
    betas = (args.beta1, args.beta2)
    optimizer = build_optimizer(weights.named_parameters(), args.lr, args.weight_decay, betas, args.eps)
    identity = run_identity(args, shards, settings, world.size)
    start, cursor = _resume(args, weights, optimizer, identity, workers, world)
    if start == 0:
        source = settings.source if settings else None
        world.main_only(_write_train_config, args.output, identity, args, source, device)
    log_path, eval_path = storage.join(args.output, LOG_FILE), storage.join(args.output, EVAL_FILE)
    records = [r for r in read_log(log_path) if r["step"] < start]  # steps after the checkpoint are redone
    evals = [r for r in read_log(eval_path) if r["step"] <= start]
    global_batch = world.size * args.accum_steps * args.batch_size
    world.log(
        f"training {args.model} ({student.image_size}px, {args.mode}) on {len(shards)} shards with "
        f"{workers} workers per process; world_size {world.size}, global_batch {global_batch} "
        f"({world.size} processes x {args.accum_steps} micro-batches x {args.batch_size}); {described}"
    )
    stream = _stream(args, shards, student, settings, cursor, world)
    loader = in_worker_order(iter(make_loader(stream, workers)), workers, cursor.next_worker)
    replay = ReplayCheck(settings) if settings is not None else None  # raw pairs have nothing to check
    student.model.train()

    def save(step: int, positions: list[dict[str, Any]]) -> None:
        state = ckpt.TrainingState(step=step, run=identity, data=pack_positions(positions))
        fp32 = weights.state_dict()
        ckpt.save_checkpoint(args.output, student, fp32, optimizer, state, keep=args.keep_checkpoints)
        write_log(log_path, records)
        plot_losses(records, storage.join(args.output, PLOT_FILE), title=f"{args.model} on {args.data[0]}")

    def run_eval(step: int) -> None:
        result = evaluate_on(student, args.eval_data, args.classnames, args.templates)
        evals.append({"step": step, **result})
        write_log(eval_path, evals)
        print(json.dumps({"eval_step": step, **result}), file=sys.stderr)

    try:
        for step in range(start, args.steps):
            began = time.perf_counter()
            micro_batches = [on_device(next(loader), device) for _ in range(args.accum_steps)]
            waited = time.perf_counter() - began
            lr = learning_rate(step, args.lr, args.warmup, args.steps)
            set_learning_rate(optimizer, lr)
            terms, grad_norm = train_step(
                student, weights, optimizer, micro_batches, objective, args.grad_clip, world
            )
            for batch in micro_batches:
                cursor.advance(batch)
                if replay is not None:
                    replay.update(batch)
            samples, skipped = world.sum(
                [sum(len(b) for b in micro_batches), sum(cursor.total_skipped().values())]
            )
            seconds = time.perf_counter() - began
            records.append(
                {
                    "step": step,
                    **terms,
                    "logit_scale": float(student.model.logit_scale.detach().float().exp()),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "samples_per_s": samples / seconds,
                    "step_seconds": seconds,
                    "data_wait_seconds": waited,
                    "replay_seconds": sum(b.produce_seconds for b in micro_batches),
                    "skipped": int(skipped),
                }
            )
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                r = records[-1]
                losses = " ".join(f"{name} {terms[name]:.4f}" for name in terms)
                world.log(
                    f"step {done}/{args.steps} {losses} scale {r['logit_scale']:.2f} lr {lr:.2e} "
                    f"{r['samples_per_s']:.1f} samples/s"
                )
            if done % args.checkpoint_every == 0 or done == args.steps:
                world.main_only(save, done, world.gather_objects(cursor.to_json()))
            if args.eval_data and args.eval_every and done % args.eval_every == 0 and done != args.steps:
                world.main_only(run_eval, done)
    finally:
        loader.close()  # releases the DataLoader iterator, which stops the loader workers
    if args.eval_data and (not evals or evals[-1]["step"] != args.steps):
        world.main_only(run_eval, args.steps)
    skipped_by_rank = world.gather_objects(cursor.total_skipped())
    replays = world.gather_objects(replay.totals() if replay is not None else None)
    if not world.is_main:
        return None
    summary = summarize(records, _sum_counts(skipped_by_rank), evals, _sum_counts(replays))
    return {"world_size": world.size, "global_batch": global_batch, **summary}


def _sum_counts(per_rank: list[dict[str, int] | None]) -> dict[str, int] | None:
    """Counts summed over ranks (None when no rank counts)."""
    if per_rank[0] is None:
        return None
    total: collections.Counter[str] = collections.Counter()
    for counts in per_rank:
        total.update(counts or {})
    return dict(sorted(total.items()))


class ReplayCheck:
    """Sums the loader workers' fingerprint checks; warns once when a replay differs from generation."""

    def __init__(self, settings: DataSettings) -> None:
        self._settings = settings
        self._by_worker: dict[int, dict[str, int]] = {}
        self.warned = False

    def update(self, batch: Batch) -> None:
        self._by_worker[batch.worker] = batch.replay
        totals = self.totals()
        if totals["differ"] and not self.warned:
            self.warned = True
            print(
                f"warning: {totals['differ']} of {totals['checked']} replayed views checked so far differ "
                "from the views the teachers embedded, so their teacher targets describe other pixels. "
                f"The data was made with {self._settings.image_stack or 'an unrecorded image stack'}; "
                f"this trainer has {image_stack()}. Match the Pillow build for exact replay (see "
                "docs/data-contract.md); the final summary gives the counts.",
                file=sys.stderr,
            )

    def totals(self) -> dict[str, int]:
        return {
            name: sum(counts.get(name, 0) for counts in self._by_worker.values())
            for name in ("checked", "differ")
        }


def summarize(
    records: list[dict[str, Any]],
    skipped: dict[str, int],
    evals: list[dict[str, Any]],
    replay: dict[str, int] | None = None,
) -> dict[str, Any]:
    """First and last losses (averaged over a few steps) and throughput, for the final report line."""
    window = max(1, min(10, len(records) // 4))
    summary: dict[str, Any] = {"steps": len(records), "skipped": skipped}
    if replay is not None:
        summary["replay_check"] = replay
    for name in CURVES:
        if records and name in records[0]:
            summary[f"first_{name}"] = sum(r[name] for r in records[:window]) / window
            summary[f"last_{name}"] = sum(r[name] for r in records[-window:]) / window
    timed = records[1:] or records  # the first step includes starting the loader workers
    if timed:
        total = sum(r["step_seconds"] for r in timed)
        summary["samples_per_s"] = sum(r["samples_per_s"] * r["step_seconds"] for r in timed) / total
        summary["data_wait_share"] = sum(r["data_wait_seconds"] for r in timed) / total
    if evals:
        summary["eval"] = evals[-1]
    return summary


def is_training_run(folder: str) -> bool:
    """A run folder of ours: its train_config.json has the fields trainer.train writes."""
    try:
        config = json.loads(storage.read_text(storage.join(folder, TRAIN_CONFIG_FILE)))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("run"), dict) and "argv" in config


def _kept(output: str) -> str:
    """What Ctrl-C leaves: the checkpoints saved so far, from which the same command resumes."""
    steps = ckpt.completed_steps(output)
    if not steps:
        return f"no checkpoint was saved yet in {output}; run the same command again to start over"
    return f"{output} keeps its checkpoint of step {steps[-1]}; run the same command again to resume from it"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_interrupt(lambda: _kept(args.output)):
        try:
            check_output_folder(
                args.output, "--output", is_training_run, "a training run of ours (no train_config.json)"
            )
            summary = train(args)
        except (
            SettingsError,
            DataError,
            StudentError,
            ckpt.CheckpointError,
            DeviceError,
            DistributedError,
            OutputRefused,
        ) as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as error:  # a read-only or full disk, a folder without permission
            print(f"error: cannot write --output {args.output}: {error.strerror or error}", file=sys.stderr)
            raise SystemExit(2) from None
    if summary is None:  # ranks other than 0: rank 0 reports for every rank
        return
    steps = ckpt.completed_steps(args.output)
    print(
        f"saved: {ckpt.step_dir(args.output, steps[-1]) if steps else 'no checkpoint'}, "
        f"{storage.join(args.output, PLOT_FILE)} and {storage.join(args.output, LOG_FILE)}",
        file=sys.stderr,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
