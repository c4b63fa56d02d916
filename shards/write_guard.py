"""Paths a command may write: never over a folder, nor over a file or into a folder it did not create.

Every command line checks its output paths here before it writes anything; a refusal is one line
and exit 2 (`OutputRefused`). What is "ours" is told by content (a field, a set of known keys, a
marker line), never by a name alone: img2dataset writes `NNNNN_stats.json` too, and anyone's folder
may hold a `config.json`. A missing path is always fine; so is an empty folder, or one holding only
hidden files (a killed run's lease and temporaries).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from shards import storage

EXIT_REFUSED = 2
_HEAD_BYTES = 4096  # enough of a file to recognise one of ours
_LISTED = 100  # entries looked at to decide whether a folder is empty


class OutputRefused(ValueError):
    """An output path that would overwrite, or fill, what the command did not create."""


def _is_remote(path: str) -> bool:
    return "://" in path


def is_folder(path: str) -> bool:
    """A local directory, or a gs:// / s3:// prefix with objects under it."""
    if not _is_remote(path):
        return os.path.isdir(path)
    return bool(_entries(path, limit=1))


def _entries(folder: str, limit: int = _LISTED) -> list[str]:
    """Names of up to `limit` entries of a folder (sub-folders included on local disks)."""
    if not _is_remote(folder):
        try:
            return sorted(os.listdir(folder))[:limit]
        except OSError:
            return []
    pattern = storage.join(folder.rstrip("/"), "*")
    try:
        found = storage.match(pattern, limit)
    except Exception:  # nothing there (Beam raises for an empty prefix on some stores)
        return []
    prefix = folder.rstrip("/") + "/"
    return [path[len(prefix) :].split("/", 1)[0] for path in found if path.startswith(prefix)]


def head(path: str) -> bytes:
    """The first few kB of a file, to recognise it by content."""
    try:
        with storage.open_read(path) as f:
            return f.read(_HEAD_BYTES)
    except OSError:
        return b""


def _file_in_the_way(path: str) -> str | None:
    """A local file where `path` or one of its parent folders would have to be (None on object stores)."""
    if _is_remote(path):
        return None
    current = os.path.abspath(path)
    while current and not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return current if current != os.path.abspath(path) and not os.path.isdir(current) else None


def check_output_file(path: str, flag: str, is_ours: Callable[[bytes], bool], what: str) -> None:
    """A file the command will (re)write: refused when it is a folder, lies under a file, or exists
    and is not `what` (recognised by `is_ours` on its first few kB)."""
    if is_folder(path):
        raise OutputRefused(f"{flag} {path} is a folder; name a new file instead (nothing was written)")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise OutputRefused(f"{flag} {path} lies under {blocker}, which is a file, not a folder")
    if storage.exists(path) and not is_ours(head(path)):
        raise OutputRefused(
            f"{flag} {path} exists and is not {what}: not overwriting it; name a new file "
            "(or remove it yourself)"
        )


def check_output_folder(
    path: str,
    flag: str,
    is_ours: Callable[[str], bool],
    what: str,
    *,
    inputs: Iterable[str] = (),
) -> None:
    """A folder the command fills: refused when it is a file, holds any of `inputs`, or holds
    anything and is not `what` (recognised by `is_ours(path)`)."""
    if not _is_remote(path) and os.path.exists(path) and not os.path.isdir(path):
        raise OutputRefused(f"{flag} {path} is a file, not a folder; name a new folder")
    if _is_remote(path) and storage.exists(path.rstrip("/")):
        raise OutputRefused(f"{flag} {path} is an object, not a folder; name a new folder")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise OutputRefused(f"{flag} {path} lies under {blocker}, which is a file, not a folder")
    folder = _normalised(path)
    held = sorted(p for p in inputs if _normalised(storage.dirname(p)) == folder)
    if held:
        raise OutputRefused(
            f"{flag} {path} holds the input shards ({storage.basename(held[0])}, ...); outputs go to a "
            "folder of their own: name a new one"
        )
    visible = [name for name in _entries(path) if not name.startswith(".")]
    if visible and not is_ours(path):
        more = ", ..." if len(visible) > 1 else ""
        raise OutputRefused(
            f"{flag} {path} holds {visible[0]}{more} and is not {what}; name a new or empty folder"
        )


def _normalised(path: str) -> str:
    path = path.rstrip("/") or "/"
    return path if _is_remote(path) else os.path.realpath(path)
