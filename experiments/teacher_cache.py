"""The miniature's teachers, trained once and cached by a key of everything that defines them.

    python -m experiments.teacher_cache [--teacher-cache DIR] [--ship]

The teachers are most of the miniature's cost (their budget is ten times the student's) and do not
depend on any student run, so every run (both profiles, every seed, every ablation) reuses one set:
`DIR/KEY/` holds each model as a `local-dir:` folder and `teachers.json` (what defines the set, each
model's evaluation, the training time). KEY hashes the world's definition, the models' configs, the
budget and the seed: changing any of them names another set. A set shipped with the repository
(`experiments/shipped_teachers/KEY.tar.xz`, written by `--ship`) is unpacked instead of trained.
Training resumes where it stopped (`DIR/training/`); the set appears under its final name only when
every model is in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.models import CAPTIONER, MODELS, PREPROCESS, TEACHERS, write_initial
from experiments.training import LEARNING_RATE, final_checkpoint, train_side_by_side
from experiments.training import train as train_model
from experiments.world import build_world, definition, split_pattern
from shards.interrupt import exit_on_interrupt
from shards.write_guard import OutputRefused
from teachers.specs import LOCAL_DIR, OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE
from teachers.tiny import local_dir_spec
from trainer.plot import read_log
from trainer.train import LOG_FILE

DEFAULT_CACHE = Path("out") / "learning_efficiency_teachers"
SHIPPED = Path(__file__).parent / "shipped_teachers"
SET_FILE = "teachers.json"
NAMES = (*TEACHERS, CAPTIONER)


@dataclasses.dataclass(frozen=True)
class TeacherBudget:
    """What the teachers learn from and for how long: decided with the setting, before any student."""

    clean: int  # images with accurate captions
    single: int  # the same with one object each: the captioner's first stage
    test: int  # held-out images the teachers are evaluated on
    steps: int  # each CLIP teacher's optimizer steps
    batch_size: int
    captioner_first_steps: int  # contrastive only, on `single`, at the teachers' batch size and lr
    captioner_steps: int  # then the CoCa loss on `clean`
    captioner_batch_size: int  # the captioner's vocabulary-wide output layer makes its steps costly
    lr: float
    captioner_lr: float
    seed: int


# Ten times the full profile's student compute (200 steps x 128) per CLIP teacher, on a clean split
# ten times its web split (4,000).
TEACHER_BUDGET = TeacherBudget(
    clean=40_000,
    single=40_000,
    test=600,
    steps=2_000,
    batch_size=128,
    captioner_first_steps=1_000,
    captioner_steps=2_000,
    captioner_batch_size=32,
    lr=LEARNING_RATE,
    # A ViT this small learns shapes at 1e-3 and not at 5e-3, where its contrastive loss rose again
    # (300-step probes: zero-shot top-1 0.21 against 0.15); the vocabulary is learnt either way.
    captioner_lr=1e-3,
    seed=0,
)


@dataclasses.dataclass(frozen=True)
class TeacherSet:
    key: str
    folder: Path
    specs: dict[str, str]  # name -> local-dir: spec
    record: dict[str, Any]  # teachers.json

    @property
    def train_seconds(self) -> float:
        return float(self.record["train_seconds"])

    def describe_training(self) -> str:
        models = self.record.get("model_train_seconds", {})
        each = ", ".join(f"{name} {seconds / 60:.0f} min" for name, seconds in models.items())
        return f"{each}, one core each" if each else f"{self.train_seconds / 60:.0f} min"


def key_of(budget: TeacherBudget) -> str:
    return _hash(
        {
            "world": definition(),
            "models": {name: MODELS[name] for name in NAMES},
            "preprocess": PREPROCESS,
            "budget": dataclasses.asdict(budget),
        }
    )


def _complete(folder: Path) -> TeacherSet | None:
    try:
        record = json.loads((folder / SET_FILE).read_text())
    except (OSError, ValueError):
        return None
    specs = {name: local_dir_spec(folder / name) for name in NAMES}
    return TeacherSet(folder.name, folder, specs, record)


def _publish(staged: Path, final: Path) -> None:
    """`staged` becomes `final` in one rename; a set another process published first is kept."""
    try:
        os.rename(staged, final)
    except OSError:
        if not (final / SET_FILE).is_file():
            raise
        shutil.rmtree(staged)


def unpack_shipped(cache: Path, key: str) -> TeacherSet | None:
    archive = SHIPPED / f"{key}.tar.xz"
    if not archive.is_file():
        return None
    cache.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f"{key}.unpack-", dir=cache))
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(staged, filter="data")
    _publish(staged, cache / key)
    return _complete(cache / key)


def pack(teachers: TeacherSet, archive: Path) -> None:
    """The set as a byte-reproducible tar.xz (sorted members, no times or owners)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        for path in sorted(p for p in teachers.folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(teachers.folder)))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    partial.write_bytes(out.getvalue())
    os.replace(partial, archive)


def _hash(defined: Any) -> str:
    return hashlib.sha256(json.dumps(defined, sort_keys=True).encode()).hexdigest()[:16]


def _model_runs(budget: TeacherBudget) -> dict[str, dict[str, Any]]:
    """Each model's training recipe (run by `training.train`); the longest run first, beside the others.

    The captioner starts with a first stage (`first`): its CLIP half learns shapes contrastively from
    one-object pictures, as a ViT this small does not from pictures of two; its CoCa training then
    starts from those weights.
    """
    recipes = {}
    for index, name in enumerate((CAPTIONER, *TEACHERS)):
        coca = name == CAPTIONER
        recipes[name] = {
            "mode": "coca" if coca else "plain",
            "steps": budget.captioner_steps if coca else budget.steps,
            "batch_size": budget.captioner_batch_size if coca else budget.batch_size,
            "lr": budget.captioner_lr if coca else budget.lr,
            "initial_seed": 1000 * budget.seed + index,
        }
        if coca:
            recipes[name]["first"] = {
                "mode": "plain",
                "split": "single",
                "steps": budget.captioner_first_steps,
                "batch_size": budget.batch_size,
                "lr": budget.lr,
            }
    return recipes


def _stage(
    data: str, test: str, start: str, run: Path, recipe: dict[str, Any], seed: int, label: str
) -> functools.partial:
    """One `training.train` run of a recipe; checkpoints along the way, so that an interrupted hour of
    training resumes instead of starting over."""
    steps, every = recipe["steps"], max(1, recipe["steps"] // 5)
    flags = ("--mode", recipe["mode"], "--eval-data", test, "--eval-every", str(every))
    return functools.partial(
        train_model,
        data, start, run, steps, recipe["batch_size"], seed, *flags,
        lr=recipe["lr"], label=label, checkpoint_every=every,
    )  # fmt: skip


def _train_stages(stages: list[functools.partial]) -> dict[str, Any]:
    """Stages in order, each starting from the last one's final weights; the last one's summary."""
    for stage in stages:
        summary = stage()
    return summary


def _step_seconds(folder: Path) -> float:
    """A model's training seconds: the steps of each of its stages, however many sessions they took."""
    logs = [run / LOG_FILE for run in (folder / "first", folder / "run") if (run / LOG_FILE).is_file()]
    return round(sum(record["step_seconds"] for log in logs for record in read_log(str(log))), 1)


def _plan(
    cache: Path, budget: TeacherBudget
) -> tuple[dict[str, Any], dict[str, functools.partial], dict[str, Path]]:
    """Write the world's splits; returns what was written, each model's training (its stages in
    turn) and the folder its final weights will be in.

    Each model trains in `DIR/training/NAME-<its own key>` and the world is written once per
    definition, both kept: a set that differs in one model's budget trains that model only, and an
    interrupted training resumes.
    """
    sizes = {"clean": budget.clean, "test": budget.test}
    work = cache / "training"
    world_folder = work / f"world-{_hash([definition(), sizes, budget.seed])}"
    world = build_world(world_folder, sizes, seed=budget.seed)
    clean, test = split_pattern(world_folder, "clean"), split_pattern(world_folder, "test")
    single_folder = work / f"world-{_hash([definition(), {'single': budget.single}, budget.seed])}"
    world.update(build_world(single_folder, {"single": budget.single}, seed=budget.seed))
    runs, folders = {}, {}
    for name, recipe in _model_runs(budget).items():
        folder = (
            work / f"{name}-{_hash([definition(), sizes, budget.seed, MODELS[name], PREPROCESS, recipe])}"
        )
        start = write_initial(name, folder / "initial", seed=recipe["initial_seed"])
        stages = []
        if "first" in recipe:
            first = recipe["first"]
            data = split_pattern(single_folder, first["split"])
            stages.append(_stage(data, test, start, folder / "first", first, budget.seed, f"{name} first"))
            start = final_checkpoint(folder / "first", first["steps"])
        stages.append(_stage(clean, test, start, folder / "run", recipe, budget.seed, name))
        runs[name] = functools.partial(_train_stages, stages)
        folders[name] = Path(final_checkpoint(folder / "run", recipe["steps"]).removeprefix(LOCAL_DIR))
    return world, runs, folders


def train(cache: Path, budget: TeacherBudget, key: str) -> TeacherSet:
    """Train the set, evaluate each model on the test split, publish it."""
    began = time.perf_counter()
    world, runs, folders = _plan(cache, budget)
    summaries = train_side_by_side(runs)
    staged = Path(tempfile.mkdtemp(prefix=f"{key}.staged-", dir=cache))
    for name in NAMES:
        (staged / name).mkdir()
        for file in (OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE):
            shutil.copyfile(folders[name] / file, staged / name / file)
    record = {
        "key": key,
        "budget": dataclasses.asdict(budget),
        "world": world,
        "eval": {name: summaries[name]["eval"] for name in NAMES},
        # each model's own training (its steps' seconds, however many sessions it took), and the
        # wall time of the call that finished the set (side by side, one core each)
        "model_train_seconds": {name: _step_seconds(folders[name].parents[2]) for name in NAMES},
        "train_seconds": round(time.perf_counter() - began, 1),
        "reproduce": "python -m experiments.teacher_cache --teacher-cache DIR --ship",
    }
    (staged / SET_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _publish(staged, cache / key)
    teachers = _complete(cache / key)
    assert teachers is not None
    return teachers


def check_cache(cache: Path) -> None:
    """The cache is a folder (new or not): sets are only ever added to it, never written over."""
    if cache.exists() and not cache.is_dir():
        raise OutputRefused(f"--teacher-cache {cache} is a file; name a folder (new or a cache of ours)")


def teacher_set(cache: Path, budget: TeacherBudget) -> tuple[TeacherSet, str]:
    """The set for `budget`: cached, else shipped, else trained now; and which of the three it was."""
    key = key_of(budget)
    found = _complete(cache / key)
    if found is not None:
        return found, "cached"
    shipped = unpack_shipped(cache, key)
    if shipped is not None:
        return shipped, "shipped"
    return train(cache, budget, key), "trained"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-cache", type=Path, default=DEFAULT_CACHE, help="default: %(default)s")
    parser.add_argument(
        "--ship",
        action="store_true",
        help=f"also write the set as {SHIPPED.name}/KEY.tar.xz in the repository",
    )
    args = parser.parse_args(argv)
    try:
        check_cache(args.teacher_cache)
    except OutputRefused as error:
        parser.exit(2, f"error: {error}\n")
    with exit_on_interrupt(lambda: f"training resumes from {args.teacher_cache} when run again"):
        teachers, how = teacher_set(args.teacher_cache, TEACHER_BUDGET)
        print(f"teachers {teachers.key} ({how}): {teachers.folder}", file=sys.stderr)
        if args.ship:
            pack(teachers, SHIPPED / f"{teachers.key}.tar.xz")
    print(json.dumps({"key": teachers.key, "folder": str(teachers.folder), "eval": teachers.record["eval"]}))


if __name__ == "__main__":
    main()
