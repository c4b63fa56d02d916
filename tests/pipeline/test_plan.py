"""`python -m pipeline.plan`: a prediction a user can trust before renting machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import plan

REPO = Path(__file__).resolve().parents[2]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_sample_counts_read_like_dataset_names():
    assert plan.parse_count("12.8M") == 12_800_000
    assert plan.parse_count("1.28B") == 1_280_000_000
    assert plan.parse_count("400k") == 400_000
    assert plan.parse_count("1e6") == 1_000_000
    with pytest.raises(Exception, match="not a sample count"):
        plan.parse_count("many")


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    assert plan.main(["--preset", "tiny", "--samples", "1M", "--device", "cuda"]) == plan.EXIT_CONFIG
    assert "run pipeline.plan on the GPU machine" in capsys.readouterr().err


def test_too_few_calibration_samples_are_refused(capsys):
    """Below the measured minimum the estimate swings by a factor of several from run to run."""
    assert (
        plan.main(["--preset", "tiny", "--samples", "1M", "--calibration-samples", "4"]) == plan.EXIT_CONFIG
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"use at least {plan.MIN_CALIBRATION_SAMPLES}" in err


def test_extrapolation_follows_the_slowest_stage_and_the_workers():
    calibration = plan.Calibration(
        seconds_per_sample={
            "decode + augment": 0.5, "captioner": 2.0, "teachers on views": 1.0,
            "teachers on texts": 0.25, "write": 0.25,
        },
        bytes_per_sample=1000.0, samples=8, how={},
    )  # fmt: skip
    # decoding and augmenting overlap the models: 2 + 1 + 0.25 + 0.25 = 3.5 s per sample
    cpu = plan.extrapolate(calibration, samples=3500, workers=4, device="cpu", price=2.0)
    assert cpu["samples_per_s"] == pytest.approx(1 / 3.5, rel=1e-4) and cpu["bottleneck"] == "captioner"
    assert cpu["worker_hours"] == pytest.approx(3500 * 3.5 / 3600, rel=1e-4)
    assert cpu["wall_hours"] == pytest.approx(cpu["worker_hours"] / 4, rel=1e-4)
    assert cpu["cost"] == pytest.approx(2.0 * cpu["worker_hours"], rel=1e-3)
    assert cpu["output_bytes"] == 3_500_000
    starting = plan.Calibration(calibration.seconds_per_sample, 1000.0, 8, {}, {"load models": 36.0})
    started = plan.extrapolate(starting, samples=3500, workers=4, device="cpu", price=None)
    assert started["startup_seconds"] == 36.0  # once per worker, all at once: wall + 36 s, 4 x 36 s of work
    assert started["wall_hours"] == pytest.approx(cpu["wall_hours"] + 0.01, rel=1e-4)
    assert started["worker_hours"] == pytest.approx(cpu["worker_hours"] + 0.04, rel=1e-4)
    slow_decoding = dict(calibration.seconds_per_sample, **{"decode + augment": 5.0})
    gpu = plan.extrapolate(
        plan.Calibration(slow_decoding, 1000.0, 8, {}), samples=3500, workers=4, device="cuda", price=None
    )
    assert gpu["samples_per_s"] == pytest.approx(0.2, rel=1e-4) and gpu["bottleneck"] == "decode + augment"


@pytest.mark.slow
def test_the_tiny_plan_predicts_the_tiny_job_within_25_percent(tmp_path, capsys):
    """Plan and job back to back, with the same torch threads (the machine is shared): the whole
    command on 96 samples, its process start and model loading included, against the plan's start-up
    plus 96 samples' time. The plan says what it is doing, stage by stage, and that alone."""
    from bench.pipeline import bundled_samples, write_raw_shard

    assert plan.main(["--preset", "tiny", "--samples", "96", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    predicted = last_json(captured.out)
    assert predicted["weights"] == "own" and predicted["bytes_per_sample"] > 0
    assert 0 < predicted["startup_seconds"] < predicted["wall_hours"] * 3600
    assert "plan: timing the captioner" in captured.err and "no CLIP weights" not in captured.err

    raw = write_raw_shard(tmp_path / "raw" / "00000000.tar", 96, bundled_samples()).parent
    command = [
        sys.executable, "-m", "pipeline.reinforce", "--input", f"{raw}/*.tar",
        "--output", str(tmp_path / "out"), "--preset", "tiny", "--model_threads", "1", "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    measured = time.perf_counter() - start
    written = sum(
        p.stat().st_size for p in (tmp_path / "out").glob("00000000.*") if p.suffix in (".tar", ".parquet")
    )
    seconds, size = predicted["wall_hours"] * 3600, predicted["bytes_per_sample"]
    print(f"plan {seconds:.2f} s, job {measured:.2f} s; plan {size} B/sample, job {written / 96:.0f}")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_written"] == 96
    assert seconds == pytest.approx(measured, rel=0.25)
    assert predicted["bytes_per_sample"] == pytest.approx(written / 96, rel=0.25)
