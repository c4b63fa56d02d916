"""Same input and seed, byte-identical output across runs, runners, worker counts, S3 and a resumed kill.

Compared: every tar, parquet, errors file, config.json and manifest.jsonl byte for byte; the stats
files minus their wall-clock `seconds` (and the input path). summary.json holds run wall times only.
Services (job server, worker pool, Dask, S3) run on 127.0.0.1, started and stopped by the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.reinforce import main
from tests.services import (
    VENV_BIN,
    dask_scheduler,
    dask_worker,
    free_port,
    kill_after_first_commit,
    service,
    stop,
)

pytestmark = pytest.mark.slow  # separate services and processes: minutes, not seconds


def assert_same_outputs(expected: Path, actual: Path, job) -> None:
    want, got = job.files(expected), job.files(actual)
    assert sorted(got) == sorted(want)
    different = [name for name in want if want[name] != got[name]]
    assert different == []


def test_a_second_in_process_run_is_byte_identical(tmp_path, job_input, reference_run, job, capsys):
    assert main(job.args(job_input[0], tmp_path / "out")) == 0
    assert_same_outputs(reference_run, tmp_path / "out", job)
    counters = capsys.readouterr().out.split("beam counters: ")[1].splitlines()[0]
    assert (
        "samples_written=19" in counters
        and "shards_done=4" in counters
        and "skipped_image_too_small=1" in counters
    )


def test_two_worker_processes_give_the_same_bytes(tmp_path, job_input, reference_run, job):
    extra = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing", "--model_threads", "0"]
    assert main(job.args(job_input[0], tmp_path / "out", *extra)) == 0
    assert_same_outputs(reference_run, tmp_path / "out", job)


def test_portable_runner_loopback_and_external_worker_pool(tmp_path, job_input, reference_run, job):
    job_port, pool_port = free_port(), free_port()
    job_server = [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main"]
    pool = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main"]
    with (
        service([*job_server, "--port", str(job_port)], job_port, tmp_path / "job_server.log"),
        service([*pool, "--service_port", str(pool_port)], pool_port, tmp_path / "worker_pool.log"),
    ):
        portable = ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}"]
        loopback = [*portable, "--environment_type", "LOOPBACK"]
        external = [
            *portable,
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            f"localhost:{pool_port}",
        ]
        assert main(job.args(job_input[0], tmp_path / "loopback", *loopback)) == 0
        assert main(job.args(job_input[0], tmp_path / "external", *external)) == 0
    assert_same_outputs(reference_run, tmp_path / "loopback", job)
    assert_same_outputs(reference_run, tmp_path / "external", job)


def test_dask_scheduler_and_two_worker_processes_share_the_shards(tmp_path, job_input, reference_run, job):
    distributed = pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with service(dask_scheduler(port), port, tmp_path / "scheduler.log"):
        worker_process = dask_worker(address, tmp_path / "worker.log", processes=2)
        try:
            with distributed.Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            extra = ["--runner", "DaskRunner", "--dask_client_address", address]
            assert main(job.args(job_input[0], tmp_path / "out", *extra)) == 0
        finally:
            stop(worker_process)
    assert_same_outputs(reference_run, tmp_path / "out", job)


def test_s3_in_and_out(tmp_path, job_input, reference_run, job):
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    with service([f"{VENV_BIN}/moto_server", "-H", "127.0.0.1", "-p", str(port)], port, tmp_path / "s3.log"):
        s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
        s3.create_bucket(Bucket="datacomp")
        for shard in sorted(job_input[0].iterdir()):
            s3.upload_file(str(shard), "datacomp", f"raw/{shard.name}")
        args = job.args("s3://datacomp/raw", "s3://datacomp/reinforced")
        s3_options = [
            "--s3_endpoint_url", endpoint, "--s3_access_key_id", "testing",
            "--s3_secret_access_key", "testing", "--s3_region_name", "us-east-1",
        ]  # fmt: skip
        assert main([*args, *s3_options]) == 0
        downloaded = tmp_path / "from_s3"
        downloaded.mkdir()
        listing = s3.list_objects_v2(Bucket="datacomp", Prefix="reinforced/")["Contents"]
        for item in listing:
            s3.download_file("datacomp", item["Key"], str(downloaded / item["Key"].split("/")[-1]))
    assert_same_outputs(reference_run, downloaded, job)


def test_a_killed_run_resumes_with_only_unfinished_shards(tmp_path, job_input, reference_run, job):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.reinforce", *job.args(job_input[0], out)]
    kill_after_first_commit(command, out)
    committed = {p.name: p.read_bytes() for p in out.glob("*_stats.json")}
    assert 1 <= len(committed) < 4, "the run should have been killed after its first shard"
    reference = job.files(reference_run)
    for path in out.iterdir():  # nothing half-written under a final name: complete, or not there
        if not path.name.startswith(".") and path.name in reference and not path.name.endswith("_stats.json"):
            assert path.read_bytes() == reference[path.name], path.name

    assert main(job.args(job_input[0], out)) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*_stats.json") if p.name in committed} == committed
    assert_same_outputs(reference_run, out, job)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no stale temporaries left
