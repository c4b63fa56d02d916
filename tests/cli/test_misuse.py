"""Every command line, misused as a new user would: one line on stderr, exit 2, no traceback, and
nothing written or destroyed (shards/write_guard.py). Each command's `main` is called with the
arguments as typed (the subprocess tests, marked slow, run them as a user does); every misuse is
refused before any model loads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from experiments import learning_efficiency
from inspection import inspect as inspect_cli
from pipeline import extend, reinforce
from tests.inspect.conftest import RunSpec, build_run
from trainer import evaluate as evaluate_cli
from trainer import train as train_cli

REPO = Path(__file__).resolve().parents[2]


def cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the repository, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def call(main: Callable[[Sequence[str]], object], capsys: pytest.CaptureFixture[str], *args: str):
    """A command's `main` on these arguments, as the interpreter runs it: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code or 0, captured.out, captured.err)


def refused(done: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """The one line a misuse gets; asserts the exit code, that it is the only line and no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_folder(sample_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reinforced run folder as the job writes it (no model needed)."""
    out = build_run(sample_raw_dir, tmp_path_factory.mktemp("run") / "out", RunSpec(max_samples=2))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_image_pixels": 10**8}))  # as the job's
    return out


@pytest.fixture
def victims(tmp_path: Path) -> dict[str, Path]:
    """What a user might name by mistake: a folder of their own files, and a file of their own."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "config.json").write_text('{"my": "settings"}\n')  # a config.json that is not ours
    mine = tmp_path / "thesis.html"
    mine.write_text("<html>my thesis</html>\n")
    return {"folder": folder, "file": mine}


# ---------------------------------------------------------------- item 1: never destroy data


@pytest.mark.slow
def test_inspect_html_into_a_folder_is_refused_and_the_run_survives(run_folder: Path) -> None:
    """The reported data loss, typed as the user typed it."""
    before = snapshot(run_folder)
    done = cli("pipeline.inspect", str(run_folder), "--html", str(run_folder))
    refused(done, "--html", "is a folder")
    assert snapshot(run_folder) == before
    assert "wrote" not in done.stdout


def test_inspect_html_over_a_folder_or_a_file_not_ours_is_refused_ours_is_replaced(
    run_folder: Path, victims: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for victim, says in ((run_folder, "is a folder"), (victims["file"], "not a report")):
        before = snapshot(victim)
        refused(call(inspect_cli.main, capsys, str(run_folder), "--html", str(victim)), "--html", says)
        assert snapshot(victim) == before
    # our own report is ours to replace: written once, then again
    report = tmp_path / "report.html"
    for _ in range(2):
        done = call(
            inspect_cli.main, capsys, str(run_folder), "--html", str(report), "--show", "1", "--limit", "2"
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert report.read_text().startswith("<!doctype html>")


def test_train_output_that_is_a_file_or_someone_elses_folder_is_refused(
    run_folder: Path, victims: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for victim, says in ((victims["file"], "is a file"), (victims["folder"], "not a training run of ours")):
        before = snapshot(victim)
        done = call(
            train_cli.main, capsys, "--data", f"{run_folder}/*.tar", "--model", "tiny", "--steps", "1",
            "--batch-size", "2", "--output", str(victim),
        )  # fmt: skip
        refused(done, "--output", says)
        assert snapshot(victim) == before


def test_reinforce_into_someone_elses_folder_is_refused(
    victims: dict[str, Path], sample_raw_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(victims["folder"])
    done = call(
        reinforce.main, capsys, "--input", f"{sample_raw_dir}/*.tar", "--output", str(victims["folder"]),
        "--preset", "tiny", "--teachers", "local-dir:/a", "--captioner", "local-dir:/c",
    )  # fmt: skip
    refused(done, "--output", "config.json, ...", "not a run folder of ours")
    assert snapshot(victims["folder"]) == before


def test_extend_into_someone_elses_folder_is_refused(
    run_folder: Path, victims: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(victims["folder"])
    done = call(
        extend.main, capsys, "--input", f"{run_folder}/*.tar", "--output", str(victims["folder"]),
        "--add-teacher", "local-dir:/nowhere",
    )  # fmt: skip
    refused(done, "--output", "not a run folder of ours")
    assert snapshot(victims["folder"]) == before


def test_learning_efficiency_out_is_checked_before_anything_is_written(
    victims: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for victim, says in (
        (victims["folder"], "not a learning-efficiency folder"),
        (victims["file"], "is a file"),
    ):
        before = snapshot(victim)
        refused(call(learning_efficiency.main, capsys, "--quick", "--out", str(victim)), "--out", says)
        assert snapshot(victim) == before
    # a folder of this experiment with another seed is not resumed as if it were the same run
    other = tmp_path / "other"
    other.mkdir()
    marker = learning_efficiency._marker(learning_efficiency.QUICK, 1)
    (other / learning_efficiency.MARKER_FILE).write_text(json.dumps(marker))
    refused(
        call(learning_efficiency.main, capsys, "--quick", "--out", str(other)),
        "another profile, seed or teacher set",
    )


# ---------------------------------------------------------------- item 2: never into the inputs' folder


def test_reinforce_into_the_raw_folder_is_refused_before_anything_is_written(
    sample_raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "RAW"
    raw.mkdir()
    for path in sample_raw_dir.iterdir():  # img2dataset's tars, parquets and its own NNNNN_stats.json
        (raw / path.name).write_bytes(path.read_bytes())
    before = snapshot(raw)
    done = call(
        reinforce.main, capsys, "--input", f"{raw}/*.tar", "--output", str(raw), "--preset", "tiny",
        "--teachers", "local-dir:/a", "--captioner", "local-dir:/c",
    )  # fmt: skip
    refused(done, "--output", "holds the input shards")
    assert snapshot(raw) == before  # no config.json, no lease left behind


def test_a_folder_holding_img2dataset_stats_files_is_not_taken_for_a_run(
    run_folder: Path, sample_raw_dir: Path, tmp_path: Path
) -> None:
    """Our config.json beside img2dataset's stats (e.g. left by an older version): their stats files
    are not commit markers, so the job refuses the folder instead of taking its shards for done."""
    from shards.run_folder import check_run_output
    from shards.write_guard import OutputRefused

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "config.json").write_bytes((run_folder / "config.json").read_bytes())
    (folder / "00000000_stats.json").write_bytes((sample_raw_dir / "00000000_stats.json").read_bytes())
    with pytest.raises(OutputRefused, match="stats file this project did not write"):
        check_run_output(str(folder), [str(sample_raw_dir / "00000000.tar")])
    check_run_output(str(run_folder), [str(sample_raw_dir / "00000000.tar")])  # our own run: resumable


def test_stats_files_are_ours_by_content_and_old_runs_still_read(
    run_folder: Path, sample_raw_dir: Path
) -> None:
    from shards.run_folder import WRITTEN_BY, is_our_stats, open_run

    ours = json.loads((run_folder / "00000000_stats.json").read_text())
    assert ours["written_by"] == WRITTEN_BY and is_our_stats(ours)
    assert not is_our_stats(json.loads((sample_raw_dir / "00000000_stats.json").read_text()))
    run = open_run(str(sample_raw_dir))
    assert run.stats(run.shards[0]) is None
    assert any("not a stats file" in what for _, what in run.problems)


def test_a_run_written_before_the_marker_still_resumes(run_folder: Path, tmp_path: Path) -> None:
    from shards.run_folder import check_run_output, committed_stats

    old = tmp_path / "old"
    old.mkdir()
    for path in run_folder.iterdir():
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            del stats["written_by"]
            data = json.dumps(stats).encode()
        (old / path.name).write_bytes(data)
    check_run_output(str(old), ["/elsewhere/00000000.tar"])
    assert committed_stats(str(old), ["00000000"])["00000000"].num_written == 2


# ---------------------------------------------------------------- item 6: one line where a traceback was


def test_evaluate_on_missing_or_folder_data_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    cases = (
        (("--data", "/nope/*.tar"), ("no .tar shards match",)),
        (("--data", str(tmp_path / "empty")), (f"(a folder? try --data '{tmp_path / 'empty'}/*.tar')",)),
        (("--data", f"{tmp_path / 'empty'}/*.tar"), ("no .tar shards match",)),
    )
    for args, fragments in cases:
        refused(call(evaluate_cli.main, capsys, "--checkpoint", "tiny", *args), *fragments)


def test_evaluate_with_a_missing_classnames_file_says_so(
    run_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--checkpoint", "tiny", "--data", f"{run_folder}/*.tar", "--classnames", "/nope.txt")
    refused(call(evaluate_cli.main, capsys, *args), "--classnames /nope.txt: no such file")


def test_train_on_a_folder_without_a_glob_gets_the_hint(
    run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = call(
        train_cli.main, capsys, "--data", str(run_folder), "--model", "tiny", "--steps", "1",
        "--batch-size", "2", "--output", str(tmp_path / "run"),
    )  # fmt: skip
    refused(done, f"(a folder? try --data '{run_folder}/*.tar')")


def test_extend_with_no_matching_input_says_no_shards_matched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--input", "/nope/*.tar", "--output", str(tmp_path / "out"), "--add-teacher", "x")
    line = refused(call(extend.main, capsys, *args), "no .tar shards match --input '/nope/*.tar'")
    assert "--input-config" not in line
    assert not (tmp_path / "out").exists()


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only file system (a tmpfs mounted ro; skipped where mounting is not allowed)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_outputs_are_one_line(
    run_folder: Path, read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = call(
        inspect_cli.main, capsys, str(run_folder), "--html", str(read_only_folder / "r.html"), "--show", "0"
    )
    refused(done, "cannot write --html", "Read-only file system")
    done = call(
        train_cli.main, capsys, "--data", f"{run_folder}/*.tar", "--model", "tiny", "--steps", "1",
        "--batch-size", "2", "--output", str(read_only_folder / "run"),
    )  # fmt: skip
    refused(done, "cannot write --output", "Read-only file system")


# ---------------------------------------------------------------- item 6: Ctrl-C


def interrupt_when(command: list[str], ready: Callable[[], bool], timeout: float = 600) -> tuple[str, float]:
    """Run a CLI in its own process group, press Ctrl-C (SIGINT to the whole group, as a terminal
    does) once `ready()`, and give back its stderr and how long it took to end; asserts exit 130."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the command never got there"
            time.sleep(0.2)
        pressed = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - pressed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "interrupt" in line.lower()]
    assert said == [stderr.strip().splitlines()[-1]], stderr[-3000:]  # one line, the last
    return said[0], took


@pytest.mark.slow
def test_ctrl_c_during_a_reinforce_run_is_one_line_and_keeps_finished_shards(
    sample_raw_dir: Path, tmp_path: Path, tiny_checkpoints: dict[str, str]
) -> None:
    out = tmp_path / "out"
    command = [
        "pipeline.reinforce", "--input", f"{sample_raw_dir}/*.tar", "--output", str(out), "--preset", "tiny",
        "--teachers", f"{tiny_checkpoints['clip-a']},{tiny_checkpoints['clip-b']}",
        "--captioner", tiny_checkpoints["coca"], "--num-views", "2", "--num-captions", "1",
        "--model_threads", "1", "--runner", "DirectRunner",
    ]  # fmt: skip
    line, took = interrupt_when(command, lambda: any(out.glob("*_stats.json")))
    done = list(out.glob("*_stats.json"))
    kept = f"{len(done)} finished shard(s) are kept in {out}"
    assert line == f"interrupted: {kept}; run the same command again to resume"
    assert took < 20
    assert not (out / ".lease.json").exists()
    assert done and all((out / p.name.replace("_stats.json", ".tar")).is_file() for p in done)


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_naming_the_checkpoint(tmp_path: Path) -> None:
    from tests.support import ShardSpec, build_shards
    from trainer.checkpoint import completed_steps

    build_shards(tmp_path / "data", ShardSpec(shards=2, per_shard=12))
    run = tmp_path / "run"
    command = [
        "trainer.train", "--data", str(tmp_path / "data" / "*.tar"), "--model", "tiny", "--steps", "100000",
        "--batch-size", "4", "--workers", "2", "--output", str(run), "--checkpoint-every", "3",
        "--teacher-dims", "8,12", "--kd-logit-scales", "100,50", "--threads", "1",
    ]  # fmt: skip
    line, took = interrupt_when(command, lambda: bool(completed_steps(str(run))))
    step = completed_steps(str(run))[-1]
    assert line.startswith(
        f"interrupted: {run} keeps its checkpoint of step {step}; run the same command again"
    )
    assert took < 20


def test_extend_records_a_relative_local_dir_spec_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.json names the added model wherever it is read from, not relative to where extend ran."""
    monkeypatch.chdir(tmp_path)
    assert extend.absolute_spec("local-dir:models/b") == f"local-dir:{tmp_path}/models/b"
    assert extend.absolute_spec("local-dir:/abs/b") == "local-dir:/abs/b"
    assert extend.absolute_spec("ViT-B-32@openai") == "ViT-B-32@openai"


def test_plot_over_a_file_not_ours_is_refused_ours_is_replaced(
    victims: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer import plot

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "total": 1.0, "logit_scale": 10.0}\n')
    before = snapshot(victims["file"])
    refused(call(plot.main, capsys, str(log), str(victims["file"])), "not a loss picture")
    refused(call(plot.main, capsys, str(log), str(victims["folder"])), "is a folder")
    assert snapshot(victims["file"]) == before
    picture = tmp_path / "loss.png"
    for _ in range(2):  # ours: drawn, then drawn again over itself
        assert call(plot.main, capsys, str(log), str(picture)).returncode == 0
    assert plot.is_our_plot(picture.read_bytes()[:4096])


# ---------------------------------------------------------------- item 12: help that says what to type


@pytest.mark.parametrize(
    ("main", "prog", "flags"),
    [
        (train_cli.main, "python -m trainer.train",
         ("--lr", "--weight-decay", "--lambda", "--steps", "--checkpoint-every", "--keep-checkpoints")),
        (evaluate_cli.main, "python -m trainer.evaluate", ("--limit", "--classnames")),
        (inspect_cli.main, "python -m pipeline.inspect", ("--limit", "--show")),
    ],
)  # fmt: skip
def test_usage_names_the_module_and_every_listed_flag_is_explained(main, prog, flags, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith(f"usage: {prog} ")
    for flag in flags:
        explained = re.search(rf"{re.escape(flag)}( [A-Z_]+)? [a-zA-Z(]", text)
        assert explained, f"{flag} has no help"


def test_plan_flags_show_their_defaults(capsys) -> None:
    from pipeline import plan

    with pytest.raises(SystemExit):
        plan.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--precision", "fp32"), ("--layout", "v1"), ("--batch-size", "64")):
        assert re.search(rf"{flag} [^-]*default {default}", text), flag


def test_a_score_run_is_one_of_ours_too(tmp_path: Path) -> None:
    """A score run's config.json has no layout: it is still ours, and its rerun resumes."""
    from shards.run_folder import check_run_output

    folder = tmp_path / "scores"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"schema_version": 1, "job": "score", "teachers": []}))
    (folder / "00000000.parquet").write_bytes(b"PAR1")
    check_run_output(str(folder), ["/raw/00000000.tar"])
