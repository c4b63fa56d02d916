"""Runs that the extend tests compare: fresh reinforce runs with one and two teachers or another
captioner, and extends of the smaller runs. All on the tiny models, seeded, one torch thread."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.extend import main as extend_main
from pipeline.reinforce import main as reinforce_main


@pytest.fixture(scope="session")
def models(tiny_checkpoints, tmp_path_factory) -> dict[str, str]:
    """The tiny specs plus `coca-2`, a second captioner (another seed), so an added family differs."""
    from teachers.tiny import PEAKED_DECODER_LOGIT_GAIN, TINY_CONFIGS, local_dir_spec, write_random_checkpoint

    coca = TINY_CONFIGS["coca"]
    folder = write_random_checkpoint(
        tmp_path_factory.mktemp("coca-2"),
        coca["model_cfg"],
        coca["preprocess_cfg"],
        seed=2003,
        decoder_logit_gain=PEAKED_DECODER_LOGIT_GAIN,
    )
    return {**tiny_checkpoints, "coca-2": local_dir_spec(folder)}


@pytest.fixture(scope="session")
def raw_input(tmp_path_factory, sample_raw_dir) -> Path:
    """Two of the bundled real-photo shards."""
    raw = tmp_path_factory.mktemp("raw")
    for name in ("00000000.tar", "00000001.tar"):
        shutil.copy(sample_raw_dir / name, raw / name)
    return raw


@pytest.fixture(scope="session")
def runs(tmp_path_factory, raw_input, models) -> SimpleNamespace:
    """`runs.reinforce(name, teachers, *flags)` and `runs.extend(name, input_run, *flags)`, each run once
    per session and remembered by name; `runs.extend_args(...)` for tests that call the CLI themselves."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def reinforce(name: str, teachers: list[str], *flags: str) -> Path:
        if name not in done:
            out = root / name
            args = [
                "--input", f"{raw_input}/*.tar", "--output", str(out), "--preset", "tiny",
                "--teachers", ",".join(models[t] for t in teachers), "--captioner", models["coca"],
                "--num-views", "2", "--num-captions", "1", "--batch-size", "8", "--seed", "7",
                "--no-progress", "--model_threads", "1", *flags,
            ]  # fmt: skip
            assert reinforce_main(args) == 0
            done[name] = out
        return done[name]

    def extend_args(input_run: Path, out: Path, *flags: str) -> list[str]:
        return [
            "--input", f"{input_run}/*.tar", "--output", str(out), "--batch-size", "8",
            "--no-progress", "--model_threads", "1", *flags,
        ]  # fmt: skip

    def extend(name: str, input_run: Path, *flags: str) -> Path:
        if name not in done:
            assert extend_main(extend_args(input_run, root / name, *flags)) == 0
            done[name] = root / name
        return done[name]

    return SimpleNamespace(reinforce=reinforce, extend=extend, extend_args=extend_args, models=models)
