"""Ctrl-C in every command: stop within seconds, say in one line what is kept and how to resume, exit 130.

Beam turns a KeyboardInterrupt raised inside a DoFn into a RuntimeError and logs it with its
traceback, and its threads log their own teardown; the handler here records that the user asked
to stop and silences logging and thread tracebacks from then on, so a command knows an interrupt
from a failure whatever exception reaches it. A thread that outlives the interrupt (Beam's) must
not keep the process alive: the process ends as soon as the line is printed, and the helper
processes it started (loader and feed workers) are ended with it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_INTERRUPTED = 130
_requested = threading.Event()


def interrupted() -> bool:
    """Whether Ctrl-C was pressed during the current `exit_on_interrupt` block."""
    return _requested.is_set()


def _on_sigint(signum: int, frame: object) -> None:
    if not _requested.is_set():
        _requested.set()
        logging.disable(logging.CRITICAL)  # Beam's teardown logs; the user gets one line
        threading.excepthook = lambda args: None
    raise KeyboardInterrupt


@contextlib.contextmanager
def exit_on_interrupt(kept: Callable[[], str]) -> Iterator[None]:
    """Run a command's work; on Ctrl-C print `interrupted: <kept()>` and end the process with 130.

    `kept()` says what is kept and how to resume; it is asked only after the work has unwound (its
    `finally` blocks have run), so it can look at what is on disk then.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if in_main else None
    _requested.clear()
    try:
        yield
    except BaseException:
        if not _requested.is_set():
            raise
        _end(kept)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if _requested.is_set():  # the work caught the interrupt itself and returned
        _end(kept)


def _end(kept: Callable[[], str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the goodbye
    try:
        message = kept()
    except Exception:
        message = "nothing more was written"
    print(f"interrupted: {message}", file=sys.stderr, flush=True)
    for child in multiprocessing.active_children():  # loader and feed workers
        with contextlib.suppress(Exception):
            child.terminate()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)  # Beam's threads are not daemons: waiting for them can hang
