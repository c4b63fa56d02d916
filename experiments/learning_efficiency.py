"""Does reinforced data teach faster? A miniature of MobileCLIP's learning-efficiency ablation.

    python -m experiments.learning_efficiency [--quick] [--out DIR] [--seed N]

End to end through our own code: a seeded shape world written as raw img2dataset shards
(`experiments.world`); two CLIP teachers and a CoCa captioner trained on its clean split with
`trainer.train --mode plain|coca`; its noisy web split reinforced by `python -m pipeline.reinforce`;
then the same student trained for the same steps on (a) the raw web split, plain CLIP loss;
(b) the reinforced split, full loss; (c) KD with original captions only; (d) synthetic captions
only, λ = 0; and two negative controls, (e) image embeddings shuffled across samples and (f) view
rows permuted within each sample (`experiments.controls`). Every arm is evaluated on the test split
every few steps. DIR gets the runs, `curves.png`, `table.md` and `results.json`; the last line
printed is the results as one JSON object.

Re-running the same command on the same DIR resumes: the world is rewritten byte for byte, finished
training runs and reinforced shards are kept (the trainer and the job resume), the rest is done.
`seconds` is the time of this invocation. DIR must be new, empty or one of this experiment's
(`experiment.json` says which profile and seed it holds): it is never written over otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from experiments.controls import write_control
from experiments.models import CAPTIONER, STUDENT, TEACHERS, write_initial
from experiments.world import CLASSNAMES, build_world, names_every_object, split_pattern
from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.reinforced import ShardFormatError, iter_shard
from shards.write_guard import OutputRefused, check_output_folder
from trainer import train as trainer
from trainer.checkpoint import step_dir
from trainer.plot import read_log

ARMS = ("plain", "reinforced", "kd_only", "syn_only", "shuffled", "permuted")
ARM_LABELS = {
    "plain": "(a) plain CLIP on web alt-text",
    "reinforced": "(b) reinforced, full loss",
    "kd_only": "(c) KD, original captions only",
    "syn_only": "(d) synthetic captions only, λ=0",
    "shuffled": "(e) control: image embeddings shuffled",
    "permuted": "(f) control: view rows permuted",
}


@dataclasses.dataclass(frozen=True)
class Profile:
    clean: int  # teacher training images
    web: int  # student training images (reinforced)
    test: int  # held-out images, one object each
    teacher_steps: int
    captioner_steps: int
    captioner_batch_size: int  # the captioner's vocabulary-wide output layer makes its steps costly
    student_steps: int
    batch_size: int
    eval_every: int
    num_views: int
    num_captions: int


FULL = Profile(
    clean=10_000,
    web=4_000,
    test=600,
    teacher_steps=400,
    captioner_steps=400,
    captioner_batch_size=32,
    student_steps=300,
    batch_size=128,
    eval_every=25,
    num_views=4,
    num_captions=3,
)
QUICK = Profile(
    clean=3_000,
    web=1_000,
    test=300,
    teacher_steps=120,
    captioner_steps=80,
    captioner_batch_size=32,
    student_steps=100,
    batch_size=64,
    eval_every=20,
    num_views=2,
    num_captions=2,
)
LEARNING_RATE = 2e-3  # tiny models from scratch; the same for every CLIP run
# The captioner's 49,408-way output layer learns the world's few dozen words too slowly at 2e-3: at
# 30 steps its captions were random words from the whole vocabulary; 5e-3 learns the language in
# about 60 steps (1e-2 as fast; higher is unstable for the CLIPs, 5e-3 already worse for them).
CAPTIONER_LEARNING_RATE = 5e-3
MARKER_FILE = "experiment.json"  # what DIR holds: this experiment, its profile and seed


def _train(
    data: str,
    model: str,
    output: Path,
    steps: int,
    batch_size: int,
    seed: int,
    *extra: str,
    lr: float = LEARNING_RATE,
) -> dict:
    """One `python -m trainer.train` run (same flags a user would type) on one core: one thread, data
    decoded in the step's process, so that runs side by side do not fight over cores. Its lines are
    labelled with the run's name (the arm or teacher): runs side by side share one terminal."""
    argv = [
        "--data", data, "--model", model, "--output", str(output), "--steps", str(steps),
        "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
        "--workers", "0", "--threads", "1", "--checkpoint-every", str(steps), "--keep-checkpoints", "1",
        "--log-every", str(max(1, steps // 4)), *extra,
    ]  # fmt: skip
    with contextlib.redirect_stderr(_Labelled(sys.stderr, output.name)):
        return trainer.train(trainer.parse_args(argv))


class _Labelled(io.TextIOBase):
    """A text stream that starts every line with `[label] `."""

    def __init__(self, stream: Any, label: str) -> None:
        self._stream, self._label, self._line_start = stream, f"[{label}] ", True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            self._stream.write(self._label + part if self._line_start else part)
            self._line_start = part.endswith("\n")
        self._stream.flush()
        return len(text)


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the experiment's own process stops its runs


def _train_side_by_side(runs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, dict]:
    """Independent training runs (name -> `_train` arguments), one process per core: each run is
    seeded and single-threaded, so its figures do not depend on what runs beside it."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, os.cpu_count() or 1), mp_context=context, initializer=_ignore_ctrl_c
    )
    try:
        futures = {name: pool.submit(_train, *args, **kwargs) for name, (args, kwargs) in runs.items()}
        return {name: future.result() for name, future in futures.items()}
    finally:  # on Ctrl-C, waiting for the runs would take minutes: exit_on_interrupt ends them
        pool.shutdown(wait=False, cancel_futures=True)


def _final_checkpoint(run: Path, steps: int) -> str:
    return f"local-dir:{Path(step_dir(str(run), steps)).resolve()}"


def _evals(run: Path) -> list[dict[str, Any]]:
    return read_log(str(run / trainer.EVAL_FILE))


def train_teachers(out: Path, profile: Profile, seed: int) -> dict[str, Any]:
    clean, test = split_pattern(out / "world", "clean"), split_pattern(out / "world", "test")
    names = (*TEACHERS, CAPTIONER)
    steps = {name: profile.captioner_steps if name == CAPTIONER else profile.teacher_steps for name in names}
    runs = {}
    for name in (CAPTIONER, *TEACHERS):  # the longest run first, beside the others
        initial = write_initial(name, out / "initial" / name, seed=1000 * seed + names.index(name))
        if name == CAPTIONER:
            mode, batch_size, lr = "coca", profile.captioner_batch_size, CAPTIONER_LEARNING_RATE
        else:
            mode, batch_size, lr = "plain", profile.batch_size, LEARNING_RATE
        flags = ("--mode", mode, "--eval-data", test)
        run = out / "teachers" / name
        runs[name] = ((clean, initial, run, steps[name], batch_size, seed, *flags), {"lr": lr})
    teachers: dict[str, Any] = {}
    summaries = _train_side_by_side(runs)
    for name in names:
        summary = summaries[name]
        spec = _final_checkpoint(out / "teachers" / name, steps[name])
        teachers[name] = {"spec": spec, "eval": summary["eval"]}
        print(f"{name}: zero-shot top-1 {summary['eval']['zeroshot_top1']:.3f}", file=sys.stderr)
    return teachers


def reinforce(out: Path, teachers: dict[str, Any], profile: Profile, seed: int) -> Path:
    """The real job, as a user runs it."""
    folder = out / "reinforced"
    command = [
        sys.executable, "-m", "pipeline.reinforce", "--input", split_pattern(out / "world", "web"),
        "--output", str(folder), "--preset", "tiny",
        "--teachers", ",".join(teachers[name]["spec"] for name in TEACHERS),
        "--captioner", teachers[CAPTIONER]["spec"],
        "--num-views", str(profile.num_views), "--num-captions", str(profile.num_captions),
        "--seed", str(seed), "--no-progress", "--runner", "DirectRunner", "--model_threads", "1",
    ]  # fmt: skip
    # its own session: Ctrl-C reaches this process only, which ends the job and says what is kept
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, start_new_session=True)
    return folder


def caption_accuracy(reinforced: Path) -> dict[str, float]:
    """Share of the web split's original and synthetic captions that name every object in the picture."""
    hits = {"original": 0, "synthetic": 0}
    totals = dict.fromkeys(hits, 0)
    for shard in sorted(storage.match(str(reinforced / "*.tar"))):
        for sample in iter_shard(shard):
            if isinstance(sample, ShardFormatError):
                continue
            scene = sample.meta["scene"]
            synthetic = [c for captions in sample.syn_captions.values() for c in captions]
            for family, captions in (("original", [sample.caption]), ("synthetic", synthetic)):
                hits[family] += sum(names_every_object(c, scene) for c in captions)
                totals[family] += len(captions)
    return {family: hits[family] / max(1, totals[family]) for family in hits}


def train_arms(out: Path, reinforced: Path, profile: Profile, seed: int) -> dict[str, Path]:
    web, test = split_pattern(out / "world", "web"), split_pattern(out / "world", "test")
    for control in ("shuffled", "permuted"):
        write_control(str(reinforced), str(out / "controls" / control), control, seed=seed)
    data = {
        "plain": (web, "--mode", "plain"),
        "reinforced": (str(reinforced / "*.tar"),),
        "kd_only": (str(reinforced / "*.tar"), "--families", "original", "--lambda", "1.0"),
        "syn_only": (str(reinforced / "*.tar"), "--families", "synthetic", "--lambda", "0.0"),
        "shuffled": (str(out / "controls" / "shuffled" / "*.tar"),),
        "permuted": (str(out / "controls" / "permuted" / "*.tar"),),
    }
    student = write_initial(STUDENT, out / "initial" / STUDENT, seed=1000 * seed + 99)
    folders = {arm: out / "students" / arm for arm in ARMS}
    runs = {}
    for arm in ARMS:
        pattern, *flags = data[arm]
        extra = ("--eval-data", test, "--eval-every", str(profile.eval_every), *flags)
        runs[arm] = (
            (pattern, student, folders[arm], profile.student_steps, profile.batch_size, seed, *extra),
            {},
        )
    for arm, summary in _train_side_by_side(runs).items():
        print(f"{arm}: zero-shot top-1 {summary['eval']['zeroshot_top1']:.3f}", file=sys.stderr)
    return folders


def steps_to_reach(evals: list[dict[str, Any]], target: float) -> int | None:
    """The first evaluated step whose zero-shot top-1 is at least `target`."""
    return next((e["step"] for e in evals if e["zeroshot_top1"] >= target), None)


def summarize(
    teachers: dict[str, Any], runs: dict[str, Path], profile: Profile, seconds: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    curves = {arm: _evals(run) for arm, run in runs.items()}
    plain_final = curves["plain"][-1]["zeroshot_top1"]
    rows = []
    for arm in ARMS:
        final = curves[arm][-1]
        rows.append(
            {
                "arm": arm,
                "top1": final["zeroshot_top1"],
                "i2t_r1": final["image_to_text_R@1"],
                "t2i_r1": final["text_to_image_R@1"],
                "steps_to_plain_final": steps_to_reach(curves[arm], plain_final),
            }
        )
    reached = steps_to_reach(curves["reinforced"], plain_final)
    results: dict[str, Any] = {
        "teacher_top1": {name: t["eval"]["zeroshot_top1"] for name, t in teachers.items()},
        **{f"{row['arm']}_top1": row["top1"] for row in rows},
        "steps_ratio": 1.0 if reached is None else reached / profile.student_steps,
        "student_steps": profile.student_steps,
        "eval_every": profile.eval_every,
        "retrieval_r1": {row["arm"]: {"i2t": row["i2t_r1"], "t2i": row["t2i_r1"]} for row in rows},
        "curves": {arm: [(e["step"], e["zeroshot_top1"]) for e in evals] for arm, evals in curves.items()},
        "seconds": round(seconds, 1),
    }
    return results, rows


def table(rows: list[dict[str, Any]], profile: Profile) -> str:
    lines = [
        "| arm | zero-shot top-1 | R@1 image→text | R@1 text→image | steps to plain's final top-1 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        reached = row["steps_to_plain_final"]
        steps = "never" if reached is None else f"{reached} / {profile.student_steps}"
        cells = [ARM_LABELS[row["arm"]], *(f"{row[k]:.3f}" for k in ("top1", "i2t_r1", "t2i_r1")), steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for arm in ARMS:
        steps, top1 = zip(*results["curves"][arm], strict=True)
        style = "--" if arm in ("shuffled", "permuted") else "-"
        axes.plot(steps, top1, style, marker="o", markersize=3, linewidth=1.5, label=ARM_LABELS[arm])
    last_step = max(step for curve in results["curves"].values() for step, _ in curve)
    for name, top1 in results["teacher_top1"].items():
        axes.axhline(top1, color="grey", linewidth=0.8, linestyle=":")
        axes.annotate(
            f"{name} {top1:.2f}", (last_step, top1), fontsize=7, color="grey", va="bottom", ha="right"
        )
    highest = max([*results["teacher_top1"].values(), *(t for c in results["curves"].values() for _, t in c)])
    chance = 1 / len(CLASSNAMES)
    axes.axhline(chance, color="black", linewidth=0.6, linestyle="-.")
    first_step = min(step for curve in results["curves"].values() for step, _ in curve)
    # on the left: the teachers' labels are on the right, and the captioner's sits near chance
    axes.annotate("chance", (first_step, chance), fontsize=7, va="bottom", ha="left")
    axes.set_xlabel("student training step")
    axes.set_ylabel(f"zero-shot top-1 (test split, {len(CLASSNAMES)} classes)")
    axes.set_ylim(0, min(1.0, 1.5 * highest))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)


def run(profile: Profile, out: Path, seed: int) -> dict[str, Any]:
    began = time.perf_counter()
    sizes = {"clean": profile.clean, "web": profile.web, "test": profile.test}
    world = build_world(out / "world", sizes, seed=seed)
    print(f"world: {json.dumps(world)}", file=sys.stderr)
    teachers = train_teachers(out, profile, seed)
    reinforced = reinforce(out, teachers, profile, seed)
    captions = caption_accuracy(reinforced)
    print(f"captions naming every object: {json.dumps(captions)}", file=sys.stderr)
    runs = train_arms(out, reinforced, profile, seed)
    results, rows = summarize(teachers, runs, profile, time.perf_counter() - began)
    results["web_caption_kinds"] = world["web"]["caption_kinds"]
    results["caption_accuracy"] = captions
    (out / "table.md").write_text(table(rows, profile))
    plot(results, out / "curves.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows, profile), file=sys.stderr)
    return results


def _marker(profile: Profile, seed: int) -> dict[str, Any]:
    return {"experiment": "learning_efficiency", "profile": dataclasses.asdict(profile), "seed": seed}


def check_out(out: Path, profile: Profile, seed: int) -> None:
    """DIR is new, empty or this experiment's with the same profile and seed (OutputRefused otherwise)."""

    def ours(folder: str) -> bool:
        for name, key in ((MARKER_FILE, "experiment"), ("results.json", "steps_ratio")):  # and older DIRs
            with contextlib.suppress(OSError, ValueError):
                if key in json.loads((Path(folder) / name).read_text()):
                    return True
        return False

    check_output_folder(str(out), "--out", ours, "a learning-efficiency folder (no experiment.json)")
    marker = out / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()) != _marker(profile, seed):
        raise OutputRefused(f"--out {out} holds a run with another profile or seed; name a new folder")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small world and short runs (minutes)")
    parser.add_argument("--out", type=Path, default=None, help="default: out/learning_efficiency[_quick]")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the world, the initial weights and the runs"
    )
    args = parser.parse_args(argv)
    out = args.out or Path("out") / ("learning_efficiency_quick" if args.quick else "learning_efficiency")
    profile = QUICK if args.quick else FULL
    with exit_on_interrupt(lambda: f"finished runs are kept in {out}; run the same command again to resume"):
        try:
            check_out(out, profile, args.seed)
        except OutputRefused as error:
            parser.exit(2, f"error: {error}\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER_FILE).write_text(json.dumps(_marker(profile, args.seed), indent=2) + "\n")
        torch.set_num_threads(2)
        results = run(profile, out, args.seed)
    print(json.dumps({k: v for k, v in results.items() if k != "curves"}))


if __name__ == "__main__":
    main()
