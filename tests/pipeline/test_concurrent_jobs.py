"""One job per output folder: a second job stops at once and says who holds the folder; a dead holder's
lease is taken over; and two jobs started together never corrupt each other's output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.reinforce import main
from shards.lease import Holder, LeaseHeldError, hold_output

# Not a speed target: a guard that a held folder is refused at once, not after loading models.
_FAST_S = 20.0


def write_lease(folder, *, host: str, pid: int, heartbeat_age_s: float) -> None:
    now = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    holder = Holder(host, pid, now - heartbeat_age_s - 60, now - heartbeat_age_s, "someone-else")
    (folder / ".lease.json").write_text(holder.to_json())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_folder_is_refused_and_released_after(tmp_path):
    out = tmp_path / "out"
    with hold_output(str(out), settle_s=0) as lease:
        assert json.loads((out / ".lease.json").read_text())["pid"] == os.getpid() == lease.holder.pid
        with pytest.raises(LeaseHeldError) as err, hold_output(str(out), settle_s=0):
            pass
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert str(out) in message and "--force-takeover" in message
    assert not out.exists()  # released, and the folder it made for the lease alone is gone too


@pytest.mark.parametrize(
    ("host", "pid", "age", "why"),
    [
        (socket.gethostname(), None, 0.0, "no longer runs on this host"),  # killed job on this host
        ("another-host", 1, 3600.0, "no heartbeat for"),  # silent for an hour elsewhere
    ],
)
def test_a_gone_holder_is_taken_over(tmp_path, host, pid, age, why):
    write_lease(tmp_path, host=host, pid=pid or dead_pid(), heartbeat_age_s=age)
    with hold_output(str(tmp_path), settle_s=0) as lease:
        assert why in lease.taken_over
        assert json.loads((tmp_path / ".lease.json").read_text())["pid"] == os.getpid()


def test_a_live_holder_elsewhere_is_taken_over_only_when_forced(tmp_path):
    write_lease(tmp_path, host="another-host", pid=1, heartbeat_age_s=5.0)
    held = r"another job \(another-host, pid 1, since .* UTC, last heartbeat [5-9] s ago\)"
    with pytest.raises(LeaseHeldError, match=held), hold_output(str(tmp_path), settle_s=0):
        pass
    with hold_output(str(tmp_path), force=True, settle_s=0) as lease:
        assert lease.taken_over == "--force-takeover"


def test_the_job_refuses_a_held_folder_within_seconds(tmp_path, sample_raw_dir, job, capsys):
    out = tmp_path / "out"
    write_lease(out, host=socket.gethostname(), pid=os.getpid(), heartbeat_age_s=1.0)
    started = time.monotonic()
    assert main(job.args(sample_raw_dir, out)) == 2
    assert time.monotonic() - started < _FAST_S
    err = capsys.readouterr().err
    assert f"another job ({socket.gethostname()}, pid {os.getpid()}" in err and "--force-takeover" in err
    assert "run the same command again" not in err
    assert sorted(p.name for p in out.iterdir()) == [".lease.json"]  # the holder's folder is untouched


@pytest.mark.slow
def test_two_jobs_on_one_folder(tmp_path, job_input, reference_run, job, capsys):
    """The second job stops at once with the holder named; the first finishes with the same bytes."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.reinforce", *job.args(job_input[0], out)]
    first = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lease.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first job ended before the second could start"
        started = time.monotonic()
        assert main(job.args(job_input[0], out)) == 2
        assert time.monotonic() - started < _FAST_S
        assert f"pid {first.pid}" in capsys.readouterr().err
        _, first_err = first.communicate(timeout=600)
        assert first.returncode == 0, first_err.decode()[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
    assert job.files(out) == job.files(reference_run)
    assert not (out / ".lease.json").exists()
