"""The teachers' cache: one set per definition, shipped sets unpacked instead of trained, byte for byte."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from experiments import learning_efficiency, teacher_cache, world
from experiments.teacher_cache import NAMES, SET_FILE, TEACHER_BUDGET, key_of, pack, teacher_set
from teachers.specs import OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE


def test_the_key_names_everything_that_defines_the_teachers(monkeypatch: pytest.MonkeyPatch) -> None:
    key = key_of(TEACHER_BUDGET)
    assert key == key_of(dataclasses.replace(TEACHER_BUDGET))
    changes = (
        {"steps": TEACHER_BUDGET.steps + 1},
        {"seed": 1},
        {"clean": 10},
        {"single": 10},
        {"captioner_first_steps": 1},
        {"lr": 1e-3},
    )
    for change in changes:
        assert key_of(dataclasses.replace(TEACHER_BUDGET, **change)) != key, change
    monkeypatch.setattr(world, "SIZES", {"small": 9.0, "large": 15.0})
    assert key_of(TEACHER_BUDGET) != key


def _fake_set(folder: Path) -> None:
    for name in NAMES:
        (folder / name).mkdir(parents=True)
        (folder / name / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps({"model_cfg": {"name": name}}))
        (folder / name / OPEN_CLIP_WEIGHTS_FILE).write_bytes(bytes(range(256)) * 40 + name.encode())
    (folder / SET_FILE).write_text(json.dumps({"train_seconds": 3600.0, "eval": {}}))


def test_a_shipped_set_is_unpacked_byte_for_byte_and_never_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_of(TEACHER_BUDGET)
    _fake_set(tmp_path / "made" / key)
    made = teacher_cache._complete(tmp_path / "made" / key)
    assert made is not None
    shipped = tmp_path / "shipped"
    pack(made, shipped / f"{key}.tar.xz")
    first = (shipped / f"{key}.tar.xz").read_bytes()
    pack(made, shipped / f"{key}.tar.xz")
    assert (shipped / f"{key}.tar.xz").read_bytes() == first  # reproducible: no times, owners or order
    monkeypatch.setattr(teacher_cache, "SHIPPED", shipped)

    def no_training(*args: object) -> None:
        raise AssertionError("a shipped set must not be trained")

    monkeypatch.setattr(teacher_cache, "train", no_training)
    cache = tmp_path / "cache"
    teachers, how = teacher_set(cache, TEACHER_BUDGET)
    assert how == "shipped" and teachers.key == key and teachers.train_seconds == 3600.0
    for path in (tmp_path / "made" / key).rglob("*"):
        if path.is_file():
            assert (cache / key / path.relative_to(tmp_path / "made" / key)).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [key]  # no staging folder left beside it
    assert teacher_set(cache, TEACHER_BUDGET)[1] == "cached"
    for name in NAMES:
        assert teachers.specs[name] == f"local-dir:{(cache / key / name).resolve()}"


def test_a_set_without_its_record_is_not_taken_as_complete(tmp_path: Path) -> None:
    key = key_of(TEACHER_BUDGET)
    _fake_set(tmp_path / key)
    (tmp_path / key / SET_FILE).unlink()
    assert teacher_cache._complete(tmp_path / key) is None


@pytest.mark.parametrize("command", [teacher_cache.main, learning_efficiency.main])
def test_a_file_as_the_cache_is_one_line_and_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: Any
) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    argv = ["--teacher-cache", str(victim)]
    if command is learning_efficiency.main:
        argv += ["--quick", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        command(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [
        f"error: --teacher-cache {victim} is a file; name a folder (new or a cache of ours)"
    ]
    assert victim.read_text() == "mine"


@pytest.mark.slow
def test_a_tiny_budget_trains_the_set_with_the_captioner_in_two_stages(tmp_path: Path) -> None:
    budget = dataclasses.replace(
        TEACHER_BUDGET,
        clean=24,
        single=16,
        test=12,
        steps=2,
        batch_size=8,
        captioner_first_steps=2,
        captioner_steps=1,
        captioner_batch_size=4,
    )
    teachers, how = teacher_set(tmp_path, budget)
    assert how == "trained" and teachers.key == key_of(budget)
    record = teachers.record
    assert sorted(record["eval"]) == sorted(NAMES) and record["world"]["single"]["samples"] == 16
    assert all(seconds > 0 for seconds in record["model_train_seconds"].values())
    runs = {run.parent.name.split("-")[0]: run for run in (tmp_path / "training").glob("*/run")}
    started = {name: json.loads((run / "train_config.json").read_text())["run"] for name, run in runs.items()}
    # the captioner's CoCa stage starts from the weights its contrastive first stage ended with
    first = runs["captioner"].parent / "first"
    assert started["captioner"]["model"] == f"local-dir:{(first / 'checkpoints' / 'step_00000002').resolve()}"
    assert json.loads((first / "train_config.json").read_text())["run"]["mode"] == "plain"
    assert started["captioner"]["mode"] == "coca" and started["captioner"]["steps"] == 1
    assert not (runs["teacher_a"].parent / "first").exists()
    assert teacher_set(tmp_path, budget)[1] == "cached"
