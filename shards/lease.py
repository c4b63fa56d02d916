"""One job at a time per output folder: a lease file naming the holder, kept fresh by a heartbeat.

Two jobs on one folder would each see the other's half-written temporaries as leftovers of a killed
attempt and delete them. The lease makes the second job stop within seconds and say who holds the
folder; a job takes over a lease only when its holder is gone (a dead pid on this host, or no
heartbeat for `stale_after_s`), and only the holder removes stale temporaries.

Taking a lease is write-then-read-back through Beam FileSystems, which offer no atomic
create-if-absent on object stores: two jobs that start within `settle_s` of each other are told
apart by whose lease survives the wait, so a job whose write took longer than that could still share
the folder with another. Hosts are told apart by name only: containers that share a hostname but not
a process table should not share an output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from shards import storage
from shards.run_config import ConfigError
from shards.run_folder import LEASE_FILE

HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # ten missed heartbeats: the holder is taken to be gone
SETTLE_S = 1.0
_LOG = logging.getLogger(__name__)


class LeaseHeldError(ConfigError):
    """Another live job is writing the output folder."""


@dataclasses.dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: float  # epoch seconds
    heartbeat: float
    token: str

    def describe(self, now: float) -> str:
        started = datetime.datetime.fromtimestamp(self.since, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{self.host}, pid {self.pid}, since {started}, last heartbeat {now - self.heartbeat:.0f} s ago"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"


def lease_path(folder: str) -> str:
    return storage.join(folder, LEASE_FILE)


def read_holder(folder: str) -> Holder | None:
    """The lease's holder; None when there is no lease (an unreadable one counts as none)."""
    path = lease_path(folder)
    try:
        if not storage.exists(path):
            return None
        data = json.loads(storage.read_text(path))
        return Holder(
            host=str(data["host"]),
            pid=int(data["pid"]),
            since=float(data["since"]),
            heartbeat=float(data["heartbeat"]),
            token=str(data["token"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def gone_because(holder: Holder, now: float, stale_after_s: float) -> str | None:
    """Why the holder can be taken to have stopped, or None while it may still be writing."""
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return f"pid {holder.pid} no longer runs on this host"
    if now - holder.heartbeat > stale_after_s:
        return f"no heartbeat for {now - holder.heartbeat:.0f} s"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@dataclasses.dataclass
class Lease:
    folder: str
    holder: Holder
    taken_over: str | None  # why an earlier holder's lease was taken over, or None


@contextlib.contextmanager
def hold_output(
    folder: str,
    *,
    force: bool = False,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
    settle_s: float = SETTLE_S,
) -> Iterator[Lease]:
    """Hold `folder` for the block; raises LeaseHeldError at once when a live job holds it.

    `force` takes the lease whatever its state: for a holder known to be dead that has not yet
    missed enough heartbeats. A live holder that loses its lease keeps running but is told so.
    """
    now = time.time()
    made_folder = "://" not in folder and not os.path.exists(folder)
    current = read_holder(folder)
    taken_over = None
    if current is not None:
        taken_over = "--force-takeover" if force else gone_because(current, now, stale_after_s)
        if taken_over is None:
            raise LeaseHeldError(
                f"another job ({current.describe(now)}) is writing {folder}; wait for it to finish, "
                "or pass --force-takeover if it is dead"
            )
    mine = Holder(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
    storage.write_text_atomic(lease_path(folder), mine.to_json())
    time.sleep(settle_s)
    survivor = read_holder(folder)
    if survivor is None or survivor.token != mine.token:
        other = survivor.describe(time.time()) if survivor else "unknown"
        raise LeaseHeldError(f"another job ({other}) started on {folder} at the same moment; let it finish")
    if current is not None:
        _LOG.warning("took over the lease on %s from %s: %s", folder, current.describe(now), taken_over)
        for leftover in storage.match(storage.join(folder, f".{LEASE_FILE}.tmp-*")):  # its half-written beat
            storage.delete(leftover)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(folder, mine, heartbeat_s, stop), name="output-lease", daemon=True
    )
    beat.start()
    try:
        yield Lease(folder, mine, taken_over)
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(Exception):  # releasing must not hide the block's own error
            holder = read_holder(folder)
            if holder is not None and holder.token == mine.token:
                storage.delete(lease_path(folder))
        if made_folder:  # a job that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _heartbeat(folder: str, mine: Holder, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            holder = read_holder(folder)
            if holder is None or holder.token != mine.token:
                who = holder.describe(time.time()) if holder else "nobody"
                _LOG.warning(
                    "lost the lease on %s (now held by %s); this job's output may be disturbed", folder, who
                )
                return
            fresh = dataclasses.replace(mine, heartbeat=time.time())
            storage.write_text_atomic(lease_path(folder), fresh.to_json())
        except Exception as exc:  # a flaky store: try again at the next beat
            _LOG.warning("could not renew the lease on %s: %s", folder, exc)
