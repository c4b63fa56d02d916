"""`python -m pipeline.plan`: what a reinforcement run will cost, measured on the machine it runs on.

Loads the preset's models (or, when their weights cannot be fetched, random-init models of the same
open_clip architectures: the same compute, so the same time), times each stage with the job's own
code on real samples, and extrapolates: samples/s per worker, wall time for W workers, worker-hours,
cost, output size, and the stage that bounds the run. The last line printed is one JSON object.

Each stage is timed in the shapes the job uses: teachers on `--batch-size` views and texts,
the captioner on the job's caption groups, after a warm-up call of the models' smallest fixed shape
(their micro-batch), for at least 20 s per stage. When the warm-up says two whole batches would
take over 40 s, as with ViT-L-14 on a CPU, micro-batches are what is timed (one, if it takes 20 s),
scaled per row: model time is linear in rows. A
worker's time per sample is the models' and the writer's, or decoding and augmenting when they are
slower: the job runs those in a helper thread ahead of the models. Each worker also pays once for
loading its models, their first (slow) calls and the first caption group's decoding before the
models have work, and the launcher waits a second to be sure of its output lease: `startup_seconds`,
what dominates a small job. The worker process's own start (the interpreter and the job's imports)
is timed in a fresh process, as a worker pays it.
Run `--device cuda` on the GPU machine itself. Progress goes to stderr, one line per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.presets import PRESETS, tiny_checkpoint_root
from pipeline.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS, ReinforceSettings
from shards.interrupt import exit_on_interrupt

BUNDLED_SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "raw"
STAGE_BUDGET_SECONDS = 40.0  # time whole job batches of a stage when two fit in this
TIMED_SECONDS = 20.0  # per stage, at least this long (or one call)
STAGES = ("decode + augment", "captioner", "teachers on views", "teachers on texts", "write")
EXIT_CONFIG = 2
# Below this many calibration samples the figure swings: `python -m bench.plan_calibration` put the
# 5-95 % range of the tiny preset's per-sample estimate at high/low 2.3-2.7 with 2 samples, 1.7-1.9
# with 4, 1.4-1.5 with 8 and 1.2-1.3 with 16 (two runs; random subsets of the bundled photos).
MIN_CALIBRATION_SAMPLES = 16
# What a worker imports before it can take a shard (the job's shard stage and its Beam graph).
WORKER_IMPORTS = "import beam_jobs.reinforce_graph, pipeline.reinforce_shard, pipeline.worker_models"


def parse_count(text: str) -> int:
    """`12.8M`, `1.28B`, `400k`, `10000` or `1e6`."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a sample count: {text!r} (e.g. 12.8M, 1.28B, 400k)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[match.group(2).lower()]
    value = float(match.group(1)) * scale
    if value < 1:
        raise argparse.ArgumentTypeError("the sample count must be at least 1")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.plan",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m pipeline.plan --preset datacompdr12m --samples 12.8M --workers 64 "
        "--device cuda --price-per-hour 0.8",
    )
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument(
        "--samples", required=True, type=parse_count, help="samples to reinforce: 12.8M, 1.28B"
    )
    parser.add_argument("--input", help="glob of raw shards to calibrate on (default: the bundled samples)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (run on the GPU machine); default cpu")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU); default 1")
    parser.add_argument("--price-per-hour", type=float, help="price of one worker-hour, for the cost")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="model weights, as the job's (default fp32)",
    )
    parser.add_argument(
        "--embedding-dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="stored embeddings, as the job's: sizes the output (default fp32)",
    )
    parser.add_argument(
        "--layout", default="v1", choices=["v1", "v2"], help="output layout, as the job's (default v1)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="views (and texts) per teacher pass, as the job's (default %(default)s)",
    )
    parser.add_argument("--num-views", type=int, help="override the preset's A")
    parser.add_argument("--num-captions", type=int, help="override the preset's S")
    parser.add_argument("--teachers", help="teacher specs overriding the preset (as for the job)")
    parser.add_argument("--captioner", help="captioner spec overriding the preset (as for the job)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores, as the job")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=32,
        help=f"real samples to time on, at least {MIN_CALIBRATION_SAMPLES} for a stable figure "
        "(default %(default)s)",
    )
    return parser


def job_settings(args: argparse.Namespace) -> ReinforceSettings:
    """The job's settings for these flags, through the job's own flag rules."""
    from pipeline.reinforce_args import settings_from_args

    job_args = argparse.Namespace(
        input=args.input or str(BUNDLED_SAMPLES / "*.tar"),
        output="plan-calibration",
        preset=args.preset,
        teachers=args.teachers,
        kd_logit_scales=None,
        captioner=args.captioner,
        num_views=args.num_views,
        num_captions=args.num_captions,
        seed=0,
        precision=args.precision,
        embedding_dtype=args.embedding_dtype,
        layout=args.layout,
        caption_tag="coca",
        batch_size=args.batch_size,
        max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
        device=args.device,
        feed_workers=0,  # decoding is timed in this process; the job's helper thread overlaps it
        allow_device_change=False,
        keep_uids=None,  # the plan times every sample: a selection only changes how many there are
        scores=None,
        min_score=None,
        top_fraction=None,
    )
    return settings_from_args(job_args)


# ---------------------------------------------------------------- models


def random_init_spec(spec: str) -> str:
    """A `local-dir:` checkpoint of the spec's open_clip architecture with random weights (cached)."""
    import open_clip

    from teachers.specs import OPEN_CLIP_WEIGHTS_FILE, parse_spec
    from teachers.tiny import PEAKED_DECODER_LOGIT_GAIN, local_dir_spec, write_random_checkpoint

    parsed = parse_spec(spec)
    config = open_clip.get_model_config(parsed.model_id) if parsed.backend == "open_clip" else None
    if config is None:
        raise ValueError(
            f"cannot tell the architecture of {spec!r} offline; pass --teachers/--captioner ARCH@TAG"
        )
    folder = tiny_checkpoint_root().parent / "random-init" / parsed.model_id
    if not (folder / OPEN_CLIP_WEIGHTS_FILE).is_file():
        preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
        # a peaked next-token distribution, as a trained captioner has (see teachers.tiny)
        gain = PEAKED_DECODER_LOGIT_GAIN if parsed.model_id.startswith("coca") else 1.0
        write_random_checkpoint(folder, config, preprocess, seed=0, decoder_logit_gain=gain)
    return local_dir_spec(folder)


def say(message: str) -> None:
    """One progress line on stderr: calibrating a large preset on a CPU takes minutes."""
    print(f"plan: {message}", file=sys.stderr, flush=True)


class _NoWeightsWarnings(logging.Filter):
    """open_clip warns for every checkpoint without weights; the plan says once that it times such."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "no CLIP weights found" not in message and "No pretrained weights loaded" not in message


@contextlib.contextmanager
def _quiet_random_init() -> Any:
    root, quiet = logging.getLogger(), _NoWeightsWarnings()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_models(settings: ReinforceSettings) -> tuple[Any, str, float]:
    """The job's models, or random-init stand-ins of the same architectures; which it was; and the
    seconds a worker takes to load them."""
    from pipeline.worker_models import load_models as load_worker_models
    from teachers.specs import ModelLoadError

    say("loading the preset's models")
    try:
        with _quiet_random_init():  # the tiny preset's own checkpoints are random-init too
            seconds, models = _timed(lambda: load_worker_models(settings))
        return models, "the run's own weights", seconds
    except ModelLoadError as exc:
        reason = str(exc).splitlines()[0]
    say("their weights are not at hand: timing random-init models of the same architectures instead")
    with _quiet_random_init():
        stand_in = dataclasses.replace(
            settings,
            teachers=tuple(random_init_spec(spec) for spec in settings.teachers),
            captioner=random_init_spec(settings.captioner),
        )
        seconds, models = _timed(lambda: load_worker_models(stand_in))
    note = (
        f"random-init weights of the same architectures (weights not at hand: {reason}); the same "
        "compute, but a random captioner writes captions to the length cap, so 'captioner' is an upper bound"
    )
    return models, note, seconds


def worker_start_seconds() -> float:
    """A fresh interpreter importing what a worker imports before its first shard, timed."""
    seconds, _ = _timed(lambda: subprocess.run([sys.executable, "-c", WORKER_IMPORTS], check=True))
    return seconds


# ---------------------------------------------------------------- calibration


@dataclasses.dataclass
class Calibration:
    seconds_per_sample: dict[str, float]  # stage -> seconds one worker spends on it per sample
    bytes_per_sample: float
    samples: int  # real samples timed
    how: dict[str, str]  # stage -> what was timed
    startup_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # once per worker


def raw_samples(pattern: str, limit: int) -> list[Any]:
    from shards import storage
    from shards.raw import RawSample, iter_raw_shard

    found: list[Any] = []
    for path in storage.match(pattern):
        if path.endswith(".tar"):
            found.extend(item for item in iter_raw_shard(path) if isinstance(item, RawSample))
        if len(found) >= limit:
            break
    return found[:limit]


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _per_row(
    rows: list[Any], micro: int, batch: int, run: Callable[[list[Any]], Any]
) -> tuple[float, float, str]:
    """Seconds per row of `run`, warm, and what its first call costs beyond that. A first call of one
    micro-batch warms the model up and estimates; then the job's whole batches (or micro-batches, when
    two batches would not fit in STAGE_BUDGET_SECONDS) are timed, call after call, for at least
    TIMED_SECONDS: a shared machine's noise averages out over many calls, and one call is all a slow
    model gets."""

    def take(count: int, offset: int) -> list[Any]:
        return [rows[(offset + i) % len(rows)] for i in range(count)]

    warm_up, _ = _timed(lambda: run(take(micro, 0)))
    unit = micro if 2 * warm_up * batch / micro > STAGE_BUDGET_SECONDS else batch
    calls, total = 0, 0.0
    while calls == 0 or total < TIMED_SECONDS:
        chunk = take(unit, micro + calls * unit)
        total += _timed(lambda chunk=chunk: run(chunk))[0]
        calls += 1
    what = "its micro-batch" if unit == micro and unit != batch else "the job's batch"
    per_row = total / (calls * unit)
    return per_row, max(0.0, warm_up - micro * per_row), f"{calls} call(s) of {unit} ({what}) after a warm-up"


def calibrate(
    settings: ReinforceSettings, models: Any, samples: list[Any], load_seconds: float = 0.0
) -> Calibration:
    import numpy as np
    import torch

    from pipeline.reinforce_shard import caption_group_size, caption_seed, prepare_sample, reinforced_sample
    from shards.lease import SETTLE_S
    from shards.writer import ShardWriter

    say(f"timing decode + augment on {len(samples)} samples")
    prepared, prepare_seconds = [], 0.0
    for raw in samples:
        seconds: dict[str, float] = {}
        prepared.append(prepare_sample(raw, settings, models.augmenter, seconds))
        prepare_seconds += sum(seconds.values())
    per_sample = {"decode + augment": prepare_seconds / len(prepared)}
    how = {"decode + augment": f"{len(prepared)} samples"}

    group = caption_group_size(settings.caption_group, models.captioner)
    captions: dict[int, list[str]] = {}

    def caption(items: list[Any]) -> None:
        seeds = [caption_seed(settings.seed, p.raw.uid) for p in items]
        for item, result in zip(
            items,
            models.captioner.caption([p.image for p in items], seeds, settings.num_captions),
            strict=True,
        ):
            if isinstance(result, list):
                captions[id(item)] = result

    first_calls = 0.0
    say(f"timing the captioner (at least {TIMED_SECONDS:.0f} s per model stage)")
    per_image, extra, how["captioner"] = _per_row(
        prepared, int(getattr(models.captioner, "micro_batch", 1)), group, caption
    )
    per_sample["captioner"] = per_image
    first_calls += extra

    views = [view for p in prepared for view in torch.from_numpy(p.views)]
    ensemble = models.ensemble
    say("timing the teachers on views")
    per_view, extra, how["teachers on views"] = _per_row(
        views,
        ensemble.micro_batch,
        settings.batch_size,
        lambda rows: ensemble.embed_images(torch.stack(rows)),
    )
    per_sample["teachers on views"] = per_view * settings.num_views
    first_calls += extra

    texts = [
        t
        for p in prepared
        for t in (p.raw.caption, *captions.get(id(p), ["a photo"] * settings.num_captions))
    ]
    say("timing the teachers on texts")
    per_text, extra, how["teachers on texts"] = _per_row(
        texts, ensemble.text_micro_batch, settings.batch_size, ensemble.embed_texts
    )
    per_sample["teachers on texts"] = per_text * (1 + settings.num_captions)
    first_calls += extra
    say("timing a worker process's start and the writer")
    startup = {
        # the interpreter and the job's imports, before a worker can take a shard
        "process start": worker_start_seconds(),
        # the launcher's wait for a rival job's lease write (counted per worker here: a second each)
        "output lease": SETTLE_S,
        "load models": load_seconds,
        "first model calls": first_calls,
        # the captioner waits for a whole group decoded and augmented before the models have work
        "first caption group's decoding": group * per_sample["decode + augment"],
    }

    # The output of these samples, written by the job's writer in the chosen layout and dtypes.
    dim = sum(ensemble.dims)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="plan-") as scratch:
        tar, parquet = os.path.join(scratch, "00000000.tar"), os.path.join(scratch, "00000000.parquet")
        start = time.perf_counter()
        with ShardWriter(
            tar, parquet, layout=settings.layout, embedding_dtype=settings.embedding_dtype
        ) as writer:
            for p in prepared:
                emb = rng.standard_normal((settings.num_views + 1 + settings.num_captions, dim)).astype(
                    np.float32
                )
                writer.write(
                    reinforced_sample(
                        p,
                        captions.get(id(p), ["a photo"] * settings.num_captions),
                        image_emb=emb[: settings.num_views],
                        caption_emb=emb[settings.num_views],
                        syn_emb=emb[settings.num_views + 1 :],
                        family=settings.caption_family,
                    )
                )
        per_sample["write"] = (time.perf_counter() - start) / len(prepared)
        how["write"] = f"{len(prepared)} samples"
        size = (os.path.getsize(tar) + os.path.getsize(parquet)) / len(prepared)
    return Calibration(per_sample, size, len(prepared), how, startup)


# ---------------------------------------------------------------- extrapolation and report


def extrapolate(
    calibration: Calibration, *, samples: int, workers: int, device: str, price: float | None
) -> dict[str, Any]:
    stages = calibration.seconds_per_sample
    models = stages["captioner"] + stages["teachers on views"] + stages["teachers on texts"]
    # The job decodes and augments in a helper thread, ahead of the models (reinforce_shard.read_ahead).
    per_sample = max(stages["decode + augment"], models + stages["write"])
    samples_per_s = 1.0 / per_sample
    startup = sum(calibration.startup_seconds.values())
    # every worker starts up once, at the same time; then they share the samples
    wall_seconds = startup + samples / workers / samples_per_s
    worker_hours = workers * wall_seconds / 3600
    main_thread = [stage for stage in stages if stage != "decode + augment"]
    bottleneck = (
        "decode + augment"
        if stages["decode + augment"] > models + stages["write"]
        else max(main_thread, key=lambda stage: stages[stage])
    )
    figures = {
        "samples": samples,
        "workers": workers,
        "device": device,
        "samples_per_s": _significant(samples_per_s),
        "wall_hours": _significant(wall_seconds / 3600),
        "worker_hours": _significant(worker_hours),
        "startup_seconds": _significant(startup),
        "bytes_per_sample": round(calibration.bytes_per_sample),
        "output_bytes": round(calibration.bytes_per_sample * samples),
        "bottleneck": bottleneck,
        "seconds_per_sample": {stage: _significant(value) for stage, value in stages.items()},
    }
    if price is not None:
        figures["cost"] = round(worker_hours * price, 2)
    return figures


def _significant(value: float) -> float:
    return float(f"{value:.6g}")


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def report(settings: ReinforceSettings, calibration: Calibration, figures: dict[str, Any], note: str) -> str:
    per_sample = sum(figures["seconds_per_sample"].values())
    lines = [
        f"plan: {figures['samples']:,} samples, preset {settings.preset} (A={settings.num_views}, "
        f"S={settings.num_captions}, batch {settings.batch_size}, {settings.precision}, "
        f"{settings.layout}/{settings.embedding_dtype}), device {figures['device']}",
        f"models: {note}",
        f"calibrated on {calibration.samples} real samples with the job's own code:",
        f"  {'stage':20s} {'s/sample':>10s} {'share':>6s}  timed",
    ]
    for stage in STAGES:
        seconds = figures["seconds_per_sample"][stage]
        marker = "  <- bottleneck" if stage == figures["bottleneck"] else ""
        share = 100 * seconds / per_sample
        lines.append(f"  {stage:20s} {seconds:10.4f} {share:5.1f}%  {calibration.how[stage]}{marker}")
    lines += [
        f"  per worker:  {figures['samples_per_s']:.4f} samples/s ({per_sample:.3f} s of stages per sample), "
        f"after {figures['startup_seconds']:.1f} s of start-up ("
        + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in calibration.startup_seconds.items())
        + ")",
        f"  wall time:   {_duration(figures['wall_hours'])} with {figures['workers']} worker(s)",
        f"  worker time: {figures['worker_hours']:,.1f} worker-hours"
        + (
            f", cost {figures['cost']:,.2f} at {figures['cost'] / figures['worker_hours']:.2f} per hour"
            if "cost" in figures and figures["worker_hours"]
            else ""
        ),
        f"  output:      {figures['bytes_per_sample'] / 1e3:.1f} kB per sample, "
        f"{figures['output_bytes'] / 1e9:,.2f} GB in all (tar + parquet)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from beam_jobs.reinforce_graph import worker_threads
    from shards.run_config import ConfigError
    from teachers.specs import ModelLoadError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: --device cuda, but CUDA is not available here; run pipeline.plan on the GPU machine "
            "itself (the figures are that machine's)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if args.calibration_samples < MIN_CALIBRATION_SAMPLES:
        print(
            f"error: --calibration-samples {args.calibration_samples} is too few for a stable figure; "
            f"use at least {MIN_CALIBRATION_SAMPLES}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    torch.set_num_threads(worker_threads(args.threads, 1))
    with exit_on_interrupt(lambda: "no plan was made (the plan writes nothing); run it again"):
        try:
            settings = job_settings(args)
            samples = raw_samples(settings.input_pattern, args.calibration_samples)
            if not samples:
                raise ConfigError(f"no readable sample in {settings.input_pattern!r}")
            models, note, load_seconds = load_models(settings)
        except (ConfigError, ModelLoadError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if len(samples) < MIN_CALIBRATION_SAMPLES:
            say(
                f"warning: the input holds only {len(samples)} readable samples; below "
                f"{MIN_CALIBRATION_SAMPLES} the figures are not stable"
            )
        calibration = calibrate(settings, models, samples, load_seconds)
    figures = extrapolate(
        calibration, samples=args.samples, workers=args.workers, device=args.device, price=args.price_per_hour
    )
    figures["weights"] = "own" if note.startswith("the run's") else "random-init"
    print(report(settings, calibration, figures, note))
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
