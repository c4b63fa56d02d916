"""The tiny job against the public DataCompDR generator's two passes, side by side, timed two ways.

    python -m bench.public_generator [--samples 128] [--views 10] [--captions 5] [--batch 32] [--threads 1]

- processing: each side's work after its models are loaded, in this process (`processing_*`).
- whole process: each side as a fresh process, from the command to its exit: interpreter start,
  imports, model loading and the work (`whole_process_*`), what a user waits for.

Same raw shard (the bundled photos, cycled to `--samples` samples), same tiny random-init models
(`teachers.tiny`: CLIP-a and CLIP-b teachers, the CoCa captioner), A views and S captions a sample,
`--threads` torch threads for both sides.

- ours: the reinforce job end to end through `beam_jobs.reinforce_job.run_job` (in-process runner,
  the code path of `python -m pipeline.reinforce --preset tiny`): decode, captions, views, both
  teachers' embeddings, the reinforced tar and parquet. Processing: the job's own wall (its models
  are loaded before it, as a worker loads them once). Whole process: `python -m pipeline.reinforce`.
- public: a reconstruction, from open_clip and torchvision calls only, of what the public generator
  (apple/ml-mobileclip-dr `scripts/gen.py`) does per batch of `--batch` images, models loaded before
  the clock starts. Pass 1 (`CaptionModel`): the CoCa's preprocess on each decoded image, then
  `model.generate(generation_type="top_p", top_p=0.9, fixed_output_length=True)` S times over the
  batch (30 tokens), texts cut as the public code cuts them. Pass 2 (`EmbeddingModel`): A views per
  image (RandomResizedCrop 224 bicubic, RandAugment 2 ops magnitude 9 of 31 bins, ToTensor,
  Normalize), then per view index the batch's views through each teacher (`F.interpolate` bicubic to
  a smaller teacher's input size, `model.forward(image=...)`), and per text index (alt-text, then the
  S captions) each teacher's tokens (`model.forward(text=...)`); embeddings and captions of a sample
  are written to a tar as `.npz` and `.json`. Whole process: this module with `--public-process`.

What the reference does not reproduce: Ray, S3 I/O and the webdataset/jsonl shard writer (replaced
by one local tar), the transforms' parameter recording (`compress`), and the public generator's check
that every teacher's normalisation equals the augmentation's (the tiny CLIP-b uses mean/std 0.5, so
the public code would refuse it; here both teachers get the augmentation's normalisation, as the
public code would after that check). Its two passes run in one process one after the other, as two
jobs would on one worker. Ours has a read-ahead thread for decoding and augmenting beside the torch
thread; process CPU seconds are printed for both sides, beside wall seconds.

The machine is shared (2 cores, other jobs running): read the ratios. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.pipeline import bundled_samples, log, settings_for, write_raw_shard

_TOP_P, _SEQ_LEN = 0.9, 30
_SOT, _EOT = "<start_of_text>", "<end_of_text>"


def _raw_items(raw: Path) -> list[tuple[str, bytes, str]]:
    """(key, image bytes, alt-text) of every sample of the raw shard, in tar order."""
    items: dict[str, dict[str, Any]] = {}
    with tarfile.open(raw) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            items.setdefault(key, {})[ext] = tar.extractfile(member).read()
    images = {
        key: next(v for ext, v in parts.items() if ext not in ("json", "txt")) for key, parts in items.items()
    }
    return [(key, images[key], parts.get("txt", b"").decode()) for key, parts in items.items()]


def _public_augmentation() -> Any:
    from torchvision import transforms as T

    from transforms.augmenter import DATACOMPDR_AUGMENTATION as config

    crop, norm = config["random_resized_crop"], config["normalize"]
    rand = config["rand_augment"]
    return T.Compose(
        [
            T.RandomResizedCrop(
                crop["size"],
                scale=crop["scale"],
                ratio=crop["ratio"],
                interpolation=T.InterpolationMode.BICUBIC,
            ),
            T.RandAugment(rand["num_ops"], rand["magnitude"], rand["num_magnitude_bins"]),
            T.ToTensor(),
            T.Normalize(norm["mean"], norm["std"]),
        ]
    )


class PublicGenerator:
    """The public generator's two passes on CPU, models loaded once."""

    def __init__(self, captioner: str, teachers: list[str]) -> None:
        import open_clip

        self.coca, _, self.coca_preprocess = open_clip.create_model_and_transforms(captioner)
        self.coca.eval()
        self.teachers = []
        for spec in teachers:
            model, _, preprocess = open_clip.create_model_and_transforms(spec)
            size = preprocess.transforms[0].size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.teachers.append((model.eval(), open_clip.get_tokenizer(spec), size))
        self.augment = _public_augmentation()
        self.decode_tokens = open_clip.decode

    def captions(self, images: list[bytes], num_captions: int) -> list[list[str]]:
        """Pass 1 on one batch: S `generate` calls over the batch."""
        pixels = torch.stack([self.coca_preprocess(Image.open(io.BytesIO(data))) for data in images])
        per_image: list[list[str]] = [[] for _ in images]
        for _ in range(num_captions):
            out = self.coca.generate(
                pixels, generation_type="top_p", top_p=_TOP_P, seq_len=_SEQ_LEN, fixed_output_length=True
            )
            for texts, row in zip(per_image, out, strict=True):
                texts.append(self.decode_tokens(row).split(_EOT)[0].split(_SOT)[-1].split(".")[0].rstrip())
        return per_image

    def embeddings(self, images: list[bytes], texts: list[list[str]], num_views: int) -> list[dict[str, Any]]:
        """Pass 2 on one batch: each image decoded again, A views of it, embedded view index by view
        index, then the texts text index by text index."""
        decoded = [Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB") for data in images]
        views = torch.stack(
            [torch.stack([self.augment(image) for _ in range(num_views)]) for image in decoded]
        )
        image_emb = []
        for k in range(num_views):
            batch, parts = views[:, k], []
            for model, _, size in self.teachers:
                if batch.shape[-2:] != size:
                    batch = F.interpolate(batch, size=size, mode="bicubic")
                parts.append(model.forward(image=batch)[0])  # (image, text, scale)
            image_emb.append(torch.cat(parts, dim=1))
        text_emb = []
        for j in range(len(texts[0])):
            parts = []
            for model, tokenizer, _ in self.teachers:
                parts.append(model.forward(text=tokenizer([t[j] for t in texts]))[1])
            text_emb.append(torch.cat(parts, dim=1))
        images_np = torch.stack(image_emb, dim=1).numpy()
        texts_np = torch.stack(text_emb, dim=1).numpy()
        return [{"image_emb": images_np[i], "text_emb": texts_np[i]} for i in range(len(images))]

    def run(self, raw: Path, out: Path, num_views: int, num_captions: int, batch: int) -> int:
        """Both passes over the shard, batch by batch; writes one tar. Returns the samples written."""
        items = _raw_items(raw)
        written = 0
        with torch.inference_mode(), tarfile.open(out, "w") as tar:
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                images = [data for _, data, _ in chunk]
                captions = self.captions(images, num_captions)
                texts = [[alt, *syn] for (_, _, alt), syn in zip(chunk, captions, strict=True)]
                for (key, _, _), text, emb in zip(
                    chunk, texts, self.embeddings(images, texts, num_views), strict=True
                ):
                    buffer = io.BytesIO()
                    np.savez(buffer, **emb)
                    for name, data in (
                        (f"{key}.npz", buffer.getvalue()),
                        (f"{key}.json", json.dumps(text).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    written += 1
        return written


def _timed(call: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _process_seconds(command: list[str]) -> float:
    """Wall seconds of a fresh Python process running `command`, from its start to its exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _tiny_specs() -> dict[str, str]:
    from pipeline.presets import tiny_checkpoint_root
    from teachers.tiny import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints(tiny_checkpoint_root())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=128, help="samples per side (default 128)")
    parser.add_argument("--views", type=int, default=10, help="A (default 10)")
    parser.add_argument("--captions", type=int, default=5, help="S (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="the public generator's images per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    # the public side as a whole process of its own: RAW_TAR OUT_TAR (what the parent times)
    parser.add_argument("--public-process", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.public_process:
        tiny = _tiny_specs()
        generator = PublicGenerator(tiny["coca"], [tiny["clip-a"], tiny["clip-b"]])
        raw, out = (Path(p) for p in args.public_process)
        generator.run(raw, out, args.views, args.captions, args.batch)
        return

    from beam_jobs.reinforce_job import run_job

    tiny = _tiny_specs()
    models = {
        "teachers": (tiny["clip-a"], tiny["clip-b"]),
        "captioner": tiny["coca"],
        "num_views": args.views,
        "num_captions": args.captions,
    }
    figures: dict[str, Any] = {
        "samples": args.samples,
        "views": args.views,
        "captions": args.captions,
        "threads": args.threads,
        "public_batch": args.batch,
    }
    with tempfile.TemporaryDirectory(prefix="bench-public-") as scratch:
        work = Path(scratch)
        raw = write_raw_shard(work / "raw" / "00000000.tar", args.samples, bundled_samples())
        torch.manual_seed(0)
        public = PublicGenerator(tiny["coca"], [tiny["clip-a"], tiny["clip-b"]])
        wall, cpu, written = _timed(
            lambda: public.run(raw, work / "public.tar", args.views, args.captions, args.batch)
        )
        public = None  # frees its models before ours load
        figures["processing_public_samples_per_s"] = round(written / wall, 3)
        figures.update(processing_public_s=round(wall, 1), processing_public_cpu_s=round(cpu, 1))
        log(
            f"processing, public generator's two passes: {written} samples in {wall:.1f} s wall, "
            f"{cpu:.1f} s CPU (models loaded before)"
        )

        settings = settings_for("tiny", raw.parent, work / "ours", models, batch_size=64)
        cpu = time.process_time()
        outcome = run_job(settings, ["--model_threads", str(args.threads)], show_progress=False)
        cpu = time.process_time() - cpu  # includes loading the models, which the wall does not
        ours = outcome.written_this_run / outcome.wall_seconds
        figures["processing_ours_samples_per_s"] = round(ours, 3)
        figures["processing_ours_s"] = round(outcome.wall_seconds, 1)
        figures["ours_cpu_s_with_model_load"] = round(cpu, 1)
        log(
            f"processing, ours: {outcome.written_this_run} samples in {outcome.wall_seconds:.1f} s wall, "
            f"{cpu:.1f} s CPU (this one with model loading)"
        )

        threads = str(args.threads)
        public_s = _process_seconds(
            ["-m", "bench.public_generator", "--public-process", str(raw), str(work / "public-process.tar"),
             "--views", str(args.views), "--captions", str(args.captions), "--batch", str(args.batch),
             "--threads", threads]
        )  # fmt: skip
        specs = f"{tiny['clip-a']},{tiny['clip-b']}"
        ours_s = _process_seconds(
            ["-m", "pipeline.reinforce", "--input", f"{raw.parent}/*.tar",
             "--output", str(work / "ours-process"), "--preset", "tiny", "--teachers", specs,
             "--captioner", tiny["coca"], "--num-views", str(args.views),
             "--num-captions", str(args.captions), "--batch-size", "64", "--model_threads", threads,
             "--no-progress", "--runner", "DirectRunner"]
        )  # fmt: skip
        figures.update(whole_process_public_s=round(public_s, 1), whole_process_ours_s=round(ours_s, 1))
        log(
            f"whole process (start, imports, model loading, work): public {public_s:.1f} s, "
            f"ours {ours_s:.1f} s"
        )
    figures["processing_speedup"] = round(ours / figures["processing_public_samples_per_s"], 2)
    figures["whole_process_speedup"] = round(public_s / ours_s, 2)
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    log(
        f"processing (models loaded): ours {ours:.3f} samples/s vs public "
        f"{figures['processing_public_samples_per_s']:.3f} samples/s, {figures['processing_speedup']:.2f}x; "
        f"whole processes: {figures['whole_process_speedup']:.2f}x (target >= 3)"
    )
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
