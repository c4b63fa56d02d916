"""Where the job's models run: recorded per run and per shard, never silently mixed, never a silent
CPU fallback for an explicit GPU, and a worker with a broken CUDA context ends instead of retrying.

No GPU exists here: CUDA is absent (the real `--device cuda` failure) or mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from shards.run_config import ConfigError, config_bytes, write_or_check_run_config


def test_the_run_and_every_shard_record_where_the_models_ran(reference_run: Path) -> None:
    config = json.loads((reference_run / "config.json").read_text())
    assert config["device_kind"] == "auto"  # the default: each worker takes its GPU if it has one ...
    stats = [json.loads(p.read_text()) for p in sorted(reference_run.glob("*_stats.json"))]
    committed = [s for s in stats if s["num_read"]]
    assert committed and all(s["device"]["kind"] == "cpu" for s in committed)  # ... and says what it found
    assert all("torch" in s["device"] for s in committed)


def test_an_explicit_gpu_that_cannot_run_fails_the_job_at_once(tmp_path, job_input, job, capsys) -> None:
    from pipeline.reinforce import main

    out = tmp_path / "out"
    assert main(job.args(job_input[0], out, "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "cuda" in err.lower()
    assert not out.exists() or not list(out.glob("*.tar"))


def _config(kind: str, micro_batch: int) -> dict:
    return {
        "schema_version": 1,
        "device_kind": kind,
        "teachers": [{"spec": "local-dir:/a", "dim": 8, "micro_batch": micro_batch, "text_micro_batch": 32}],
        "versions": {},
    }


def test_a_resume_on_another_device_kind_is_refused_unless_allowed(tmp_path: Path) -> None:
    out = str(tmp_path)
    assert write_or_check_run_config(out, _config("cuda", 64)) is False
    first = (tmp_path / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="computed on cuda, and this resume would run on cpu"):
        write_or_check_run_config(out, _config("cpu", 8))
    assert write_or_check_run_config(out, _config("cpu", 8), allow_device_change=True) is True
    assert (tmp_path / "config.json").read_bytes() == first  # the first device stays on record
    with pytest.raises(ConfigError, match="different settings"):  # other differences still refuse
        write_or_check_run_config(out, {**_config("cpu", 8), "schema_version": 2}, allow_device_change=True)


def test_a_run_begun_before_device_kind_was_recorded_still_resumes(tmp_path: Path) -> None:
    old = _config("cpu", 8)
    del old["device_kind"]
    (tmp_path / "config.json").write_bytes(config_bytes(old))
    assert write_or_check_run_config(str(tmp_path), _config("cpu", 8)) is True


def test_the_launcher_of_a_remote_gpu_run_describes_the_workers_models_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, tiny_checkpoints: dict[str, str]
) -> None:
    import pipeline.worker_models as worker_models
    from pipeline.settings import ReinforceSettings
    from teachers.ensemble import CUDA_MICRO_BATCHES

    def no_gpu_here(*args, **kwargs):
        raise AssertionError("the launcher must not resolve (or touch) a GPU")

    monkeypatch.setattr(worker_models, "resolve_device", no_gpu_here)
    settings = ReinforceSettings(
        input_pattern="",
        output_dir="",
        preset="tiny",
        teachers=(tiny_checkpoints["clip-a"],),
        kd_logit_scales=(100.0,),
        captioner=tiny_checkpoints["coca"],
        num_views=2,
        num_captions=1,
        device="cuda",
    )
    models = worker_models.load_models(settings, describe_only=True)
    described = models.ensemble.describe()[0]
    assert (described["micro_batch"], described["text_micro_batch"]) == CUDA_MICRO_BATCHES
    assert models.device == {}
    assert worker_models.run_device_kind("cuda:1") == "cuda"
    assert worker_models.run_device_kind("cpu") == "cpu"
    assert worker_models.run_device_kind("auto") == "auto"  # each worker's own, in its stats


class _Exited(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "ends"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (ValueError("a plain bug"), False),
    ],
)
def test_a_cuda_failure_ends_the_worker_process_instead_of_retrying_in_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: Exception, ends: bool
) -> None:
    import beam_jobs.reinforce_graph as graph

    class FailingFn(graph.ShardFn):
        def models_tag(self) -> tuple:
            return ("failing",)

        def run_shard(self, input_path, models, on_batch):
            raise error

    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(graph.os, "_exit", fake_exit)
    settings = SimpleNamespace(output_dir=str(tmp_path))  # no shard of it is committed yet
    fn = FailingFn(settings=settings, threads=1, sharing=1, load_models=lambda s: object())
    fn._holder = fn.adopt(object())  # the worker's loaded models, as setup() leaves them
    expected = _Exited if ends else type(error)
    with pytest.raises(expected) as caught:
        list(fn.process("raw/00000000.tar"))
    if ends:
        assert caught.value.args == (graph.EXIT_BROKEN_CUDA,)
