"""Benchmark of the reinforcement job: end-to-end samples/s against the pure model compute, and memory.

    python -m bench.pipeline [--threads N] [--b32-samples N] [--rss-sizes 100,10000]

1. Throughput, for the `tiny` preset and for a ViT-B-32-sized random-init preset (two ViT-B-32
   teachers, a CoCa ViT-B-32 captioner, 10 views, 5 captions): the job end to end (in-process
   runner, the same code path as `--runner DirectRunner`) beside the teachers' and captioner's own
   compute on the same samples, batched the same way, measured in the same run. The ratio is the
   share of the job's time the models get; decoding, augmenting, I/O and Beam take the rest.
2. Peak RSS of a whole job process (launcher, Beam, models) on a 100-sample shard and on a
   10,000-sample shard. The captioner there is an instant stand-in: the tiny CoCa needs ~0.1 s a
   caption on this machine, which would make a 10,000-sample run take hours, and its memory does
   not grow with the shard.

The machine is shared (2 cores, other jobs running), so figures move between runs. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "raw"


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- inputs


def bundled_samples() -> list[list[tuple[str, bytes]]]:
    """The bundled raw shards' samples, each as its list of (member name, bytes)."""
    from shards.raw import split_member_name

    samples: dict[str, list[tuple[str, bytes]]] = {}
    for shard in sorted(SAMPLES.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _ = split_member_name(member.name)
                samples.setdefault(f"{shard.stem}/{key}", []).append(
                    (member.name, tar.extractfile(member).read())
                )
    return list(samples.values())


def write_raw_shard(path: Path, count: int, source: list[list[tuple[str, bytes]]]) -> Path:
    """`count` samples cycling over the bundled photos, each with its own key and uid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for index in range(count):
            key = f"{index:09d}"
            for name, data in source[index % len(source)]:
                ext = name.split(".", 1)[1]
                if ext == "json":
                    meta = json.loads(data)
                    meta.update(key=key, uid=f"{index:032x}")
                    data = json.dumps(meta).encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- a ViT-B-32-sized random-init preset


def random_checkpoint_spec(model_name: str, folder: Path, seed: int) -> str:
    """A random-init checkpoint of a built-in open_clip architecture, in `local-dir:` layout (cached)."""
    import open_clip

    from teachers.specs import OPEN_CLIP_WEIGHTS_FILE
    from teachers.tiny import PEAKED_DECODER_LOGIT_GAIN, local_dir_spec
    from teachers.tiny import write_random_checkpoint as write

    if not (folder / OPEN_CLIP_WEIGHTS_FILE).is_file():
        preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
        # a peaked next-token distribution, like a trained captioner's (see teachers.tiny)
        gain = PEAKED_DECODER_LOGIT_GAIN if model_name.startswith("coca") else 1.0
        write(folder, open_clip.get_model_config(model_name), preprocess, seed=seed, decoder_logit_gain=gain)
    return local_dir_spec(folder)


def b32_settings(cache: Path) -> dict[str, Any]:
    return {
        "teachers": (
            random_checkpoint_spec("ViT-B-32", cache / "vit-b-32-a", 2001),
            random_checkpoint_spec("ViT-B-32", cache / "vit-b-32-b", 2002),
        ),
        "captioner": random_checkpoint_spec("coca_ViT-B-32", cache / "coca-vit-b-32", 2003),
        "num_views": 10,
        "num_captions": 5,
    }


# ---------------------------------------------------------------- throughput


def settings_for(name: str, raw: Path, out: Path, models: dict[str, Any], batch_size: int):
    from pipeline.settings import ReinforceSettings

    return ReinforceSettings(
        input_pattern=str(raw / "*.tar"),
        output_dir=str(out),
        preset=name,
        teachers=tuple(models["teachers"]),
        kd_logit_scales=(100.0,) * len(models["teachers"]),
        captioner=models["captioner"],
        num_views=models["num_views"],
        num_captions=models["num_captions"],
        batch_size=batch_size,
    )


def model_compute_seconds(settings: Any, loaded: Any, raw: Path) -> tuple[int, float, dict[str, float]]:
    """The teachers' and captioner's time on the shard's samples, with the job's batch shapes."""
    from pipeline.reinforce_shard import caption_group_size, caption_seed
    from shards.raw import RawSample, iter_raw_shard
    from transforms import decode_image, view_rng

    images, uids, captions, views = [], [], [], []
    for shard in sorted(raw.glob("*.tar")):
        for item in iter_raw_shard(str(shard)):
            if not isinstance(item, RawSample):
                continue
            image = decode_image(item.image)
            params = [loaded.augmenter.sample(view_rng(settings.seed, item.uid, k), image.size) for k in
                      range(settings.num_views)]  # fmt: skip
            views.extend(loaded.augmenter.apply(image, p) for p in params)
            images.append(image)
            uids.append(item.uid)
            captions.append(item.caption)
    batch = settings.batch_size
    group = caption_group_size(settings.caption_group, loaded.captioner)
    seconds = {}
    start = time.perf_counter()
    synthetic: list[list[str]] = []
    for i in range(0, len(images), group):
        seeds = [caption_seed(settings.seed, uid) for uid in uids[i : i + group]]
        synthetic.extend(loaded.captioner.caption(images[i : i + group], seeds, settings.num_captions))
    seconds["caption"] = time.perf_counter() - start
    texts = [t for caption, syn in zip(captions, synthetic, strict=True) for t in (caption, *syn)]
    start = time.perf_counter()
    for i in range(0, len(views), batch):
        part = views[i : i + batch]
        part += [torch.zeros_like(views[0])] * (batch - len(part))
        loaded.ensemble.embed_images(torch.stack(part))
    seconds["embed_images"] = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        part = texts[i : i + batch]
        loaded.ensemble.embed_texts(part + [""] * (batch - len(part)))
    seconds["embed_texts"] = time.perf_counter() - start
    return len(images), sum(seconds.values()), seconds


def throughput(name: str, models: dict[str, Any], raw: Path, work: Path, threads: int, batch_size: int):
    from beam_jobs.reinforce_job import run_job
    from pipeline.worker_models import load_models

    torch.set_num_threads(threads)
    out = work / f"out-{name}"
    settings = settings_for(name, raw, out, models, batch_size)
    loaded = load_models(settings)
    samples, compute, parts = model_compute_seconds(settings, loaded, raw)
    del loaded
    outcome = run_job(settings, ["--model_threads", str(threads)], show_progress=False)
    written = outcome.written_this_run
    assert written == samples, f"the job wrote {written} samples, the compute pass saw {samples}"
    ceiling = samples / compute
    end_to_end = written / outcome.wall_seconds
    stage = outcome.summary.seconds
    log(
        f"{name}: {samples} samples, A={settings.num_views} S={settings.num_captions}, batch {batch_size}, "
        f"{threads} torch thread(s)\n"
        f"  models alone: {compute:.1f} s = {ceiling:.3f} samples/s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())})\n"
        f"  job end to end: {outcome.wall_seconds:.1f} s = {end_to_end:.3f} samples/s -> "
        f"{100 * end_to_end / ceiling:.1f}% of the models-alone rate\n"
        f"  job stages: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(stage.items(), key=lambda kv: -kv[1]))
    )
    return {
        f"{name}_samples": samples,
        f"{name}_models_alone_samples_per_s": round(ceiling, 4),
        f"{name}_end_to_end_samples_per_s": round(end_to_end, 4),
        f"{name}_share_of_ceiling_pct": round(100 * end_to_end / ceiling, 1),
    }


# ---------------------------------------------------------------- memory


class _InstantCaptioner:
    micro_batch = 8

    def caption(self, images: list[Any], seeds: list[int], num_captions: int) -> list[list[str]]:
        return [[f"a picture, seed {seed % 997}, take {k}" for k in range(num_captions)] for seed in seeds]

    def describe(self) -> dict[str, Any]:
        return {"spec": "bench:instant-captioner"}


def rss_child(raw: Path, out: Path, teachers: list[str], threads: int) -> None:
    """Runs in its own process: the whole job on one shard, with the instant captioner."""
    from beam_jobs.reinforce_job import run_job
    from pipeline.reinforce_shard import ShardModels
    from pipeline.settings import ReinforceSettings
    from teachers.ensemble import TeacherEnsemble
    from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter

    def load(settings: ReinforceSettings) -> ShardModels:
        ensemble = TeacherEnsemble.load(
            list(settings.teachers), kd_logit_scales=list(settings.kd_logit_scales)
        )
        return ShardModels(ensemble, _InstantCaptioner(), ViewAugmenter.from_config(DATACOMPDR_AUGMENTATION))

    torch.set_num_threads(threads)
    settings = ReinforceSettings(
        input_pattern=str(raw / "*.tar"),
        output_dir=str(out),
        preset="bench",
        teachers=tuple(teachers),
        kd_logit_scales=(100.0,) * len(teachers),
        captioner="bench:instant-captioner",
        num_views=1,
        num_captions=1,
        batch_size=64,
    )
    outcome = run_job(settings, ["--model_threads", str(threads)], show_progress=False, load_models=load)
    peak_kb = peak_rss_kb()
    print(
        json.dumps({"written": outcome.written_this_run, "seconds": outcome.wall_seconds, "peak_kb": peak_kb})
    )


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across exec,
    so a child started by a large parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no procfs: the best available figure


def peak_rss_mb(
    size: int, work: Path, source: list[Any], teachers: list[str], threads: int
) -> dict[str, Any]:
    raw = write_raw_shard(work / f"rss-{size}" / "raw" / "00000000.tar", size, source)
    command = [
        sys.executable, "-m", "bench.pipeline", "--rss-child", str(raw.parent),
        "--rss-out", str(work / f"rss-{size}" / "out"), "--teachers", ",".join(teachers),
        "--threads", str(threads),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak_kb = result["peak_kb"]
    log(
        f"rss: {size}-sample shard ({raw.stat().st_size / 1e6:.0f} MB tar): peak {peak_kb / 1024:.0f} MB, "
        f"{result['written']} written in {result['seconds']:.0f} s"
    )
    return {"written": result["written"], "peak_rss_mb": round(peak_kb / 1024, 1)}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the machine is shared; 1 is steadiest)"
    )
    parser.add_argument("--tiny-samples", type=int, default=256, help="samples for the tiny preset")
    parser.add_argument("--b32-samples", type=int, default=12, help="samples for the ViT-B-32-sized preset")
    parser.add_argument("--rss-sizes", default="100,10000", help="shard sizes for the peak-RSS runs")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dcdr-bench-checkpoints"))
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--rss-out", help=argparse.SUPPRESS)
    parser.add_argument("--teachers", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rss_child:
        rss_child(Path(args.rss_child), Path(args.rss_out), args.teachers.split(","), args.threads)
        return

    from teachers.tiny import ensure_tiny_checkpoints

    log("bench.pipeline: figures from one run on a shared 2-core machine; expect them to move between runs")
    cache = Path(args.cache)
    tiny = ensure_tiny_checkpoints(cache / "tiny")
    figures: dict[str, Any] = {"threads": args.threads, "cpu_count": os.cpu_count()}
    source = bundled_samples()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        work = Path(scratch)
        tiny_models = {
            "teachers": (tiny["clip-a"], tiny["clip-b"]),
            "captioner": tiny["coca"],
            "num_views": 4,
            "num_captions": 2,
        }
        raw_tiny = write_raw_shard(work / "raw-tiny" / "00000000.tar", args.tiny_samples, source).parent
        figures.update(throughput("tiny", tiny_models, raw_tiny, work, args.threads, batch_size=64))
        raw_b32 = write_raw_shard(work / "raw-b32" / "00000000.tar", args.b32_samples, source).parent
        figures.update(
            throughput("vit_b_32", b32_settings(cache), raw_b32, work, args.threads, batch_size=64)
        )
        sizes = sorted(int(s) for s in args.rss_sizes.split(","))
        for size in sizes:
            rss = peak_rss_mb(size, work, source, [tiny["clip-a"], tiny["clip-b"]], args.threads)
            figures[f"rss_{size}_samples_peak_mb"] = rss["peak_rss_mb"]
        if len(sizes) >= 2:
            ratio = figures[f"rss_{sizes[-1]}_samples_peak_mb"] / figures[f"rss_{sizes[0]}_samples_peak_mb"]
            figures["rss_ratio_largest_to_smallest"] = round(ratio, 3)
            log(f"rss: {sizes[-1]}-sample peak / {sizes[0]}-sample peak = {ratio:.2f} (target <= 1.5)")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
