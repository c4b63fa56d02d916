"""Loopback services the runner and fault tests start and stop: a free port, a background process in
its own session, a Dask scheduler with worker processes that can be killed one by one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited early with {process.returncode}: {process.args}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start(args: list[str], log: Path) -> subprocess.Popen:
    """A background process in its own session (so that it and its children can be stopped together)."""
    # Beam's worker pool starts SDK workers as plain `python`: this environment's must come first.
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the process's session (and only it); SIGKILL when it does not end within 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def service(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    """A background service listening on `port`; on exit, its session is stopped."""
    process = start(args, log)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        stop(process)


def dask_scheduler(port: int) -> list[str]:
    return [f"{VENV_BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]


def dask_worker(address: str, log: Path, processes: int = 1) -> subprocess.Popen:
    """`processes` worker processes of one thread each under one `dask worker` (its own session)."""
    args = [f"{VENV_BIN}/dask", "worker", address, "--nworkers", str(processes), "--nthreads", "1"]
    return start([*args, "--no-dashboard"], log)


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[SimpleNamespace]:
    """A scheduler and `workers` worker processes (one thread each, each `dask worker` in its own
    session so that one can be killed alone), and a client of the test's own to watch them."""
    import distributed

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with service(dask_scheduler(port), port, folder / "scheduler.log") as scheduler:
        cluster = SimpleNamespace(address=address, scheduler=scheduler, workers=[], client=None)
        try:
            for index in range(workers):
                cluster.workers.append(dask_worker(address, folder / f"worker{index}.log"))
            cluster.client = distributed.Client(address, timeout=60)
            cluster.client.wait_for_workers(workers, timeout=120)
            yield cluster
        finally:
            if cluster.client is not None:
                with contextlib.suppress(Exception):
                    cluster.client.close(timeout=10)
            for worker in cluster.workers:
                stop(worker)


def add_dask_worker(cluster: SimpleNamespace, folder: Path) -> None:
    cluster.workers.append(dask_worker(cluster.address, folder / f"worker{len(cluster.workers)}.log"))
    alive = sum(1 for worker in cluster.workers if worker.poll() is None)
    cluster.client.wait_for_workers(alive, timeout=120)


def wait_inside_a_shard(out: Path, job: subprocess.Popen) -> None:
    """Return once a shard is being written in `out` (its temporaries exist)."""
    deadline = time.monotonic() + 300
    while not any(out.glob(".[0-9]*.tmp-*")):
        if job.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no shard was seen being written (job exit status {job.poll()})")
        time.sleep(0.02)


def kill_a_worker_inside_a_shard(cluster: SimpleNamespace, out: Path, job: subprocess.Popen) -> None:
    """SIGKILL the session of a worker that runs a task while a shard is being written (its
    temporaries exist): a machine lost in the middle of a shard."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        wait_inside_a_shard(out, job)
        pids = cluster.client.run(os.getpid)  # worker address -> its process id
        for address, keys in cluster.client.processing().items():
            if keys and address in pids:
                group = os.getpgid(pids[address])
                victim = next(w for w in cluster.workers if w.pid == group and w.poll() is None)
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                return
        time.sleep(0.02)
    raise AssertionError(f"no worker was seen inside a shard (job exit status {job.poll()})")


def timed_run(command: list[str], out: Path) -> float:
    """Run a job to its end; the seconds from its config.json appearing (launch done) to its exit."""
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (out / "config.json").exists() and job.poll() is None:
        time.sleep(0.02)
    began = time.monotonic()
    _, errors = job.communicate(timeout=600)
    assert job.returncode == 0, errors
    return time.monotonic() - began


def kill_after_launch(command: list[str], out: Path, delay: float) -> bool:
    """Start a job in its own session and SIGKILL the whole session `delay` seconds after its
    config.json exists (an earlier run's counts: the job is past its launch checks); True when the
    job was still running then."""
    job = start(command, out.parent / f"{out.name}.killed.log")
    try:
        while not (out / "config.json").exists() and job.poll() is None:
            time.sleep(0.02)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.01)
        return job.poll() is None
    finally:
        stop(job, signal.SIGKILL)


def kill_after_first_commit(command: list[str], out: Path) -> None:
    """Start a job in its own session and SIGKILL the whole session as soon as its first shard is
    committed (a stats file exists in `out`), or after 240 s."""
    job = start(command, out.parent / f"{out.name}.killed.log")
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*_stats.json")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
    finally:
        stop(job, signal.SIGKILL)


def run_losing_a_dask_worker(command: list[str], out: Path, cluster: SimpleNamespace, folder: Path) -> None:
    """Run a job on the cluster and SIGKILL a worker inside a shard. The job must then finish on the
    survivor, or stop with at most two lines (no traceback), after which the same command with a new
    worker must finish the rest."""
    with (folder / "job.err").open("wb") as err:
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        kill_a_worker_inside_a_shard(cluster, out, job)
        code = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    if code != 0:
        errors = (folder / "job.err").read_text()
        assert "Traceback" not in errors and len(errors.strip().splitlines()) <= 2, errors
        add_dask_worker(cluster, folder)
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
