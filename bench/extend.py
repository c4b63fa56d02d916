"""Benchmark of the extend job: samples/s of growing a finished run, against redoing it.

    python -m bench.extend [--threads N] [--samples N]

On the tiny models (A=4 views, S=2 captions), one shard of N samples cycled from the bundled photos:
1. a run with teacher clip-a is made (not timed here), then extended by teacher clip-b
   (`--add-teacher`): end-to-end samples/s beside clip-b's own compute on the same replayed views
   and texts, batched the same way, measured in the same run (the ratio is the share of the
   extend's time the teacher gets; reading, decoding, replaying views and writing take the rest);
2. the same run extended by a caption family (`--add-captioner`, the tiny CoCa again);
3. the alternative without extend: a fresh run with both teachers, samples/s, and how many times
   faster the extend is.

The machine is shared (2 cores, other jobs running), so figures move between runs. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.pipeline import bundled_samples, log, settings_for, write_raw_shard

NUM_VIEWS, NUM_CAPTIONS, BATCH = 4, 2, 64


def extend_settings(source: Path, out: Path, **grow: Any):
    from pipeline.extend_settings import ExtendSettings, read_input_config

    settings = ExtendSettings(
        input_pattern=str(source / "*.tar"),
        output_dir=str(out),
        input_config=read_input_config(str(source / "*.tar")),
        batch_size=BATCH,
        **grow,
    )
    settings.validate()
    return settings


def teacher_alone_seconds(settings: Any, grown: Path) -> tuple[int, float]:
    """The added teacher's own time on the views and texts the extend embedded, in its batch shapes."""
    from pipeline.worker_models import load_extend_models
    from shards.reinforced import iter_shard
    from transforms import decode_image, decode_param_aug

    models = load_extend_models(settings)
    teacher, augmenter = models.new_teacher, models.augmenter
    views, texts, samples = [], [], 0
    for sample in iter_shard(str(grown / "00000000.tar")):
        image = decode_image(sample.image)
        views.extend(augmenter.apply(image, decode_param_aug(p)) for p in sample.param_aug)
        texts.extend([sample.caption, *(c for caps in sample.syn_captions.values() for c in caps)])
        samples += 1
    start = time.perf_counter()
    for i in range(0, len(views), BATCH):
        part = views[i : i + BATCH]
        teacher.embed_images(torch.stack(part + [torch.zeros_like(part[0])] * (BATCH - len(part))))
    for i in range(0, len(texts), BATCH):
        part = texts[i : i + BATCH]
        teacher.embed_texts(part + [""] * (BATCH - len(part)))
    return samples, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest here)")
    parser.add_argument("--samples", type=int, default=128, help="samples in the shard")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dcdr-bench-checkpoints"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from beam_jobs.extend_job import run_extend_job
    from beam_jobs.reinforce_job import run_job
    from teachers.tiny import ensure_tiny_checkpoints

    log("bench.extend: figures from one run on a shared 2-core machine; expect them to move between runs")
    torch.set_num_threads(args.threads)
    beam = ["--model_threads", str(args.threads)]
    tiny = ensure_tiny_checkpoints(Path(args.cache) / "tiny")
    figures: dict[str, Any] = {"threads": args.threads, "cpu_count": os.cpu_count(), "samples": args.samples}
    with tempfile.TemporaryDirectory(prefix="bench-extend-") as scratch:
        work = Path(scratch)
        raw = write_raw_shard(work / "raw" / "00000000.tar", args.samples, bundled_samples()).parent

        def reinforce(name: str, teachers: tuple[str, ...]) -> Any:
            models = {"teachers": teachers, "captioner": tiny["coca"], "num_views": NUM_VIEWS,
                      "num_captions": NUM_CAPTIONS}  # fmt: skip
            settings = settings_for("tiny", raw, work / name, models, BATCH)
            return run_job(settings, beam, show_progress=False)

        reinforce("a", (tiny["clip-a"],))
        teacher = extend_settings(work / "a", work / "a+b", add_teacher=tiny["clip-b"])
        grown = run_extend_job(teacher, beam, show_progress=False)
        samples, alone = teacher_alone_seconds(teacher, work / "a+b")
        assert grown.written_this_run == samples == args.samples, (grown.written_this_run, samples)
        teacher_rate, ceiling = samples / grown.wall_seconds, samples / alone
        log(
            f"extend --add-teacher clip-b: {samples} samples, A={NUM_VIEWS} S={NUM_CAPTIONS}, batch {BATCH}\n"
            f"  end to end: {grown.wall_seconds:.1f} s = {teacher_rate:.2f} samples/s\n"
            f"  the teacher alone: {alone:.1f} s = {ceiling:.2f} samples/s -> the extend runs at "
            f"{100 * teacher_rate / ceiling:.0f}% of it\n  stages: "
            + ", ".join(
                f"{k} {v:.1f} s" for k, v in sorted(grown.summary.seconds.items(), key=lambda kv: -kv[1])
            )
        )
        captions = extend_settings(
            work / "a", work / "a+coca", add_captioner=tiny["coca"], caption_tag="again"
        )
        captioned = run_extend_job(captions, beam, show_progress=False)
        caption_rate = captioned.written_this_run / captioned.wall_seconds
        log(f"extend --add-captioner coca: {captioned.wall_seconds:.1f} s = {caption_rate:.2f} samples/s")
        fresh = reinforce("fresh a+b", (tiny["clip-a"], tiny["clip-b"]))
        fresh_rate = fresh.written_this_run / fresh.wall_seconds
        log(
            f"redo everything (reinforce with clip-a + clip-b): {fresh.wall_seconds:.1f} s = "
            f"{fresh_rate:.2f} samples/s; the extend adds the teacher {teacher_rate / fresh_rate:.1f}x faster"
        )
    figures.update(
        {
            "extend_teacher_samples_per_s": round(teacher_rate, 3),
            "extend_teacher_alone_samples_per_s": round(ceiling, 3),
            "extend_teacher_share_of_ceiling_pct": round(100 * teacher_rate / ceiling, 1),
            "extend_captioner_samples_per_s": round(caption_rate, 3),
            "reinforce_both_teachers_samples_per_s": round(fresh_rate, 3),
            "extend_teacher_speedup_vs_redo": round(teacher_rate / fresh_rate, 2),
        }
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
