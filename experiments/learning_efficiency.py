"""Does reinforced data teach faster? A miniature of MobileCLIP's learning-efficiency ablation.

    python -m experiments.learning_efficiency [--quick] [--out DIR] [--seed N] [--teacher-cache DIR]
                                              [--ignore-preconditions]

End to end through our own code, in the paper's setting: a seeded shape world written as raw
img2dataset shards (`experiments.world`); two CLIP teachers and a CoCa captioner that know far more
than the student (ten times its compute, on a clean split ten times its web split; trained once with
`trainer.train --mode plain|coca` and cached by `experiments.teacher_cache`); the noisy web split
reinforced by `python -m pipeline.reinforce`; the preconditions (each teacher's zero-shot top-1, the
captioner's accuracy on the web images) checked and printed before any student trains, the run
stopping with exit 3 if one fails (unless --ignore-preconditions); then the same student trained for
the same steps on (a) the raw web split, plain CLIP loss; (b) the reinforced split, full loss; (c)
KD with original captions only; (d) synthetic captions only, λ = 0; (g) the full loss with KD from
the better teacher alone; and two negative controls, (e) image embeddings shuffled across samples
and (f) view rows permuted within each sample (`experiments.controls`). Every arm is evaluated on
the test split every few steps. DIR gets the runs, `curves.png`, `table.md` and `results.json`; the
last line printed is the results as one JSON object.

Re-running the same command on the same DIR resumes: the world is rewritten byte for byte, finished
training runs and reinforced shards are kept (the trainer and the job resume), the rest is done.
`seconds` is the time of this invocation, without the teachers' training (`setting` says how long
that took). DIR must be new, empty or one of this experiment's (`experiment.json` says which profile
and seed it holds): it is never written over otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from experiments.controls import CONTROLS, write_control
from experiments.models import CAPTIONER, STUDENT, TEACHERS, write_initial
from experiments.teacher_cache import (
    DEFAULT_CACHE,
    TEACHER_BUDGET,
    TeacherSet,
    check_cache,
    key_of,
    teacher_set,
)
from experiments.training import train, train_side_by_side
from experiments.world import CLASSNAMES, build_world, definition, names_every_object, split_pattern
from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.reinforced import ShardFormatError, iter_shard
from shards.write_guard import OutputRefused, check_output_folder
from trainer import train as trainer
from trainer.evaluate import evaluate_on
from trainer.plot import read_log
from trainer.students import create_student

ARMS = ("plain", "reinforced", "kd_only", "syn_only", "single", "shuffled", "permuted")
ARM_LABELS = {
    "plain": "(a) plain CLIP on web alt-text",
    "reinforced": "(b) reinforced, full loss",
    "kd_only": "(c) KD, original captions only",
    "syn_only": "(d) synthetic captions only, λ=0",
    "single": "(g) full loss, KD from the better teacher alone",
    "shuffled": "(e) control: image embeddings shuffled",
    "permuted": "(f) control: view rows permuted",
}


@dataclasses.dataclass(frozen=True)
class Profile:
    web: int  # student training images (reinforced)
    test: int  # held-out images, one object each
    student_steps: int
    batch_size: int
    eval_every: int
    num_views: int
    num_captions: int
    # Preconditions, checked before any student trains: the setting must be the paper's.
    min_teacher_top1: float  # each CLIP teacher's zero-shot top-1 on this run's test split
    min_caption_accuracy: float  # share of synthetic captions naming every object of the web image


FULL = Profile(
    web=4_000,
    test=600,
    student_steps=200,
    batch_size=128,
    eval_every=20,
    num_views=4,
    num_captions=3,
    min_teacher_top1=0.6,
    min_caption_accuracy=0.5,
)
# The same teachers (cached, or shipped with the repository), a quarter of the web split, 80 steps at
# the full batch (at batch 64 the reinforced student's lead was within noise): minutes, for CI. Its
# preconditions are the full profile's.
QUICK = dataclasses.replace(
    FULL, web=1_000, test=300, student_steps=80, batch_size=128, eval_every=20, num_views=2, num_captions=2
)
MARKER_FILE = "experiment.json"  # what DIR holds: this experiment, its profile and seed


class PreconditionFailed(Exception):
    """The setting is not the paper's (weak teachers or captioner): no student is trained."""


def _evals(run: Path) -> list[dict[str, Any]]:
    return read_log(str(run / trainer.EVAL_FILE))


def evaluate_teachers(teachers: TeacherSet, test: str) -> dict[str, dict[str, Any]]:
    """Each model of the set on this run's test split, as a student is evaluated (the captioner by its
    contrastive towers)."""
    return {name: evaluate_on(create_student(spec), [test]) for name, spec in teachers.specs.items()}


def preconditions(
    profile: Profile, evals: dict[str, dict[str, Any]], captions: dict[str, float]
) -> tuple[list[str], list[str]]:
    """One line per precondition, and the preconditions not met."""
    checks = [
        (
            f"{name} zero-shot top-1 {evals[name]['zeroshot_top1']:.3f} >= {profile.min_teacher_top1}",
            evals[name]["zeroshot_top1"] >= profile.min_teacher_top1,
        )
        for name in TEACHERS
    ]
    checks.append(
        (
            f"{CAPTIONER}'s captions name every object of the web image: {captions['synthetic']:.1%} >= "
            f"{profile.min_caption_accuracy:.0%} (the web alt-text: {captions['original']:.1%})",
            captions["synthetic"] >= profile.min_caption_accuracy,
        )
    )
    lines = [f"{'ok  ' if met else 'FAIL'} {text}" for text, met in checks]
    return lines, [text for text, met in checks if not met]


def reinforce(out: Path, teachers: TeacherSet, profile: Profile, seed: int) -> Path:
    """The real job, as a user runs it."""
    folder = out / "reinforced"
    command = [
        sys.executable, "-m", "pipeline.reinforce", "--input", split_pattern(out / "world", "web"),
        "--output", str(folder), "--preset", "tiny",
        "--teachers", ",".join(teachers.specs[name] for name in TEACHERS),
        "--captioner", teachers.specs[CAPTIONER],
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


def train_arms(out: Path, reinforced: Path, profile: Profile, seed: int, single: str) -> dict[str, Path]:
    """Every arm from the same initial student for the same steps; `single` is the teacher of arm (g)."""
    web, test = split_pattern(out / "world", "web"), split_pattern(out / "world", "test")
    for control in CONTROLS:
        write_control(str(reinforced), str(out / "controls" / control), control, seed=seed)
    data = {
        "plain": (web, "--mode", "plain"),
        "reinforced": (str(reinforced / "*.tar"),),
        "kd_only": (str(reinforced / "*.tar"), "--families", "original", "--lambda", "1.0"),
        "syn_only": (str(reinforced / "*.tar"), "--families", "synthetic", "--lambda", "0.0"),
        "single": (str(reinforced / "*.tar"), "--distil-from", str(TEACHERS.index(single))),
        "shuffled": (str(out / "controls" / "shuffled" / "*.tar"),),
        "permuted": (str(out / "controls" / "permuted" / "*.tar"),),
    }
    student = write_initial(STUDENT, out / "initial" / STUDENT, seed=1000 * seed + 99)
    folders = {arm: out / "students" / arm for arm in ARMS}
    runs = {}
    for arm in ARMS:
        pattern, *flags = data[arm]
        extra = ("--eval-data", test, "--eval-every", str(profile.eval_every), *flags)
        runs[arm] = functools.partial(
            train, pattern, student, folders[arm], profile.student_steps, profile.batch_size, seed, *extra
        )
    for arm, summary in train_side_by_side(runs).items():
        print(f"{arm}: zero-shot top-1 {summary['eval']['zeroshot_top1']:.3f}", file=sys.stderr)
    return folders


def steps_to_reach(evals: list[dict[str, Any]], target: float) -> int | None:
    """The first evaluated step whose zero-shot top-1 is at least `target`."""
    return next((e["step"] for e in evals if e["zeroshot_top1"] >= target), None)


def summarize(
    teacher_evals: dict[str, dict[str, Any]], runs: dict[str, Path], profile: Profile
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
        "teacher_top1": {name: e["zeroshot_top1"] for name, e in teacher_evals.items()},
        **{f"{row['arm']}_top1": row["top1"] for row in rows},
        "steps_ratio": 1.0 if reached is None else reached / profile.student_steps,
        "student_steps": profile.student_steps,
        "eval_every": profile.eval_every,
        "retrieval_r1": {row["arm"]: {"i2t": row["i2t_r1"], "t2i": row["t2i_r1"]} for row in rows},
        "curves": {arm: [(e["step"], e["zeroshot_top1"]) for e in evals] for arm, evals in curves.items()},
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
        style = "--" if arm in CONTROLS else "-"
        axes.plot(steps, top1, style, marker="o", markersize=3, linewidth=1.5, label=ARM_LABELS[arm])
    first_step = min(step for curve in results["curves"].values() for step, _ in curve)
    levels: dict[float, list[str]] = {}  # teachers at the same level share one line and one label
    for name, top1 in results["teacher_top1"].items():
        levels.setdefault(round(top1, 2), []).append(name)
    for top1, names in levels.items():
        axes.axhline(top1, color="grey", linewidth=0.8, linestyle=":")
        label = f"{', '.join(names)} {top1:.2f}"
        # on the left, where the students are still low; below the line at the top of the axes
        axes.annotate(
            label, (first_step, top1), fontsize=7, color="grey", va="top" if top1 > 0.9 else "bottom"
        )
    highest = max([*results["teacher_top1"].values(), *(t for c in results["curves"].values() for _, t in c)])
    chance = 1 / len(CLASSNAMES)
    axes.axhline(chance, color="black", linewidth=0.6, linestyle="-.")
    axes.annotate("chance", (first_step, chance), fontsize=7, va="bottom", ha="left")
    axes.set_xlabel("student training step")
    axes.set_ylabel(f"zero-shot top-1 (test split, {len(CLASSNAMES)} classes)")
    axes.set_ylim(0, min(1.0, 1.5 * highest))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(0.0, 0.6), ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)


def setting(profile: Profile, teachers: TeacherSet) -> dict[str, Any]:
    """What the run is, stated before any student trains: the world and what the teachers got."""
    budget = teachers.record["budget"]
    student_samples = profile.student_steps * profile.batch_size
    return {
        "world": definition(),
        "teachers": teachers.key,
        "teacher_budget": budget,
        "teacher_compute_x_student": round(budget["steps"] * budget["batch_size"] / student_samples, 1),
        "clean_x_web": round(budget["clean"] / profile.web, 1),
        "teacher_train_seconds": teachers.record.get("model_train_seconds", teachers.train_seconds),
    }


def run(
    profile: Profile, out: Path, seed: int, cache: Path, ignore_preconditions: bool = False
) -> dict[str, Any]:
    began = time.perf_counter()
    world = build_world(out / "world", {"web": profile.web, "test": profile.test}, seed=seed)
    print(f"world: {json.dumps(world)}", file=sys.stderr)
    asked = time.perf_counter()
    teachers, how = teacher_set(cache, TEACHER_BUDGET)
    teacher_seconds = time.perf_counter() - asked if how == "trained" else 0.0
    stated = setting(profile, teachers)
    print(
        f"teachers {teachers.key}: {how} (their training: {teachers.describe_training()}); each "
        f"CLIP teacher had {stated['teacher_compute_x_student']}x the student's steps x batch, on a "
        f"clean split {stated['clean_x_web']}x the web split",
        file=sys.stderr,
    )
    teacher_evals = evaluate_teachers(teachers, split_pattern(out / "world", "test"))
    reinforced = reinforce(out, teachers, profile, seed)
    captions = caption_accuracy(reinforced)
    lines, failed = preconditions(profile, teacher_evals, captions)
    for line in lines:
        print(f"precondition {line}", file=sys.stderr)
    if failed and not ignore_preconditions:
        raise PreconditionFailed(
            "the setting is not the paper's, so no student was trained: not met: "
            + "; ".join(failed)
            + " (--ignore-preconditions trains the students all the same)"
        )
    single = max(TEACHERS, key=lambda name: teacher_evals[name]["zeroshot_top1"])
    runs = train_arms(out, reinforced, profile, seed, single)
    results, rows = summarize(teacher_evals, runs, profile)
    results.update(
        setting=stated,
        teachers_from=how,
        single_teacher=single,
        web_caption_kinds=world["web"]["caption_kinds"],
        caption_accuracy=captions,
        preconditions=lines,
        preconditions_met=not failed,
        seconds=round(time.perf_counter() - began - teacher_seconds, 1),
    )
    (out / "table.md").write_text(table(rows, profile))
    plot(results, out / "curves.png")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows, profile), file=sys.stderr)
    return results


def _marker(profile: Profile, seed: int) -> dict[str, Any]:
    return {
        "experiment": "learning_efficiency",
        "profile": dataclasses.asdict(profile),
        "seed": seed,
        "teachers": key_of(TEACHER_BUDGET),  # reinforced data kept for a resume must be of these teachers
    }


def check_out(out: Path, profile: Profile, seed: int) -> None:
    """DIR is new, empty or this experiment's, same profile, seed and teachers (else OutputRefused)."""

    def ours(folder: str) -> bool:
        for name, key in ((MARKER_FILE, "experiment"), ("results.json", "steps_ratio")):  # and older DIRs
            with contextlib.suppress(OSError, ValueError):
                if key in json.loads((Path(folder) / name).read_text()):
                    return True
        return False

    check_output_folder(str(out), "--out", ours, "a learning-efficiency folder (no experiment.json)")
    marker = out / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()) != _marker(profile, seed):
        raise OutputRefused(
            f"--out {out} holds a run with another profile, seed or teacher set; name a new folder"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small world and short runs (minutes)")
    parser.add_argument("--out", type=Path, default=None, help="default: out/learning_efficiency[_quick]")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the web and test splits, the student's initial weights and the runs (the teachers "
        "are one set for every seed)",
    )
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="trained teacher sets, by key (default: %(default)s); a missing set is unpacked from the "
        "shipped ones or trained once (about an hour)",
    )
    parser.add_argument(
        "--ignore-preconditions",
        action="store_true",
        help="train the students even if a precondition fails (results.json's preconditions_met says so)",
    )
    args = parser.parse_args(argv)
    out = args.out or Path("out") / ("learning_efficiency_quick" if args.quick else "learning_efficiency")
    profile = QUICK if args.quick else FULL
    with exit_on_interrupt(lambda: f"finished runs are kept in {out}; run the same command again to resume"):
        try:
            check_out(out, profile, args.seed)
            check_cache(args.teacher_cache)
        except OutputRefused as error:
            parser.exit(2, f"error: {error}\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER_FILE).write_text(json.dumps(_marker(profile, args.seed), indent=2) + "\n")
        torch.set_num_threads(2)
        try:
            results = run(profile, out, args.seed, args.teacher_cache, args.ignore_preconditions)
        except PreconditionFailed as error:
            parser.exit(3, f"error: {error}\n")
    print(json.dumps({k: v for k, v in results.items() if k != "curves"}))


if __name__ == "__main__":
    main()
