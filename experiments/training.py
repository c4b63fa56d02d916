"""Training runs of the miniature: `python -m trainer.train` as a user types it, run side by side.

Each run is seeded and single-threaded, one process per core, so its figures do not depend on what
runs beside it; its lines are labelled with the run's name, since runs side by side share a terminal.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from trainer import train as trainer
from trainer.checkpoint import step_dir

# Tiny models from scratch: the same peak learning rate for every CLIP run.
LEARNING_RATE = 2e-3


def train(
    data: str,
    model: str,
    output: Path,
    steps: int,
    batch_size: int,
    seed: int,
    *extra: str,
    lr: float = LEARNING_RATE,
    label: str | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """One `python -m trainer.train` run (same flags a user would type) on one core: one thread, data
    decoded in the step's process, so that runs side by side do not fight over cores. Its lines are
    labelled with `label` (default: the run folder's name): runs side by side share one terminal."""
    argv = [
        "--data", data, "--model", model, "--output", str(output), "--steps", str(steps),
        "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
        "--workers", "0", "--threads", "1", "--checkpoint-every", str(checkpoint_every or steps),
        "--keep-checkpoints", "1", "--log-every", str(max(1, steps // 4)), *extra,
    ]  # fmt: skip
    with contextlib.redirect_stderr(_Labelled(sys.stderr, label or output.name)):
        return trainer.train(trainer.parse_args(argv))


class _Labelled(io.TextIOBase):
    """A text stream that starts every line with `[label] `."""

    def __init__(self, stream: Any, label: str) -> None:
        self._stream, self._label, self._line_start = stream, f"[{label}] ", True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            self._stream.write(self._label + part if self._line_start else part)
            self._line_start = part.endswith("\n")
        self._stream.flush()
        return len(text)


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the experiment's own process stops its runs


def train_side_by_side(runs: dict[str, Callable[[], dict]]) -> dict[str, dict]:
    """Independent training runs (name -> a picklable call of `train`, or of several in turn), one
    process per core: each run is seeded and single-threaded, so its figures do not depend on what
    runs beside it."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, os.cpu_count() or 1), mp_context=context, initializer=_ignore_ctrl_c
    )
    try:
        futures = {name: pool.submit(run) for name, run in runs.items()}
        return {name: future.result() for name, future in futures.items()}
    finally:  # on Ctrl-C, waiting for the runs would take minutes: exit_on_interrupt ends them
        pool.shutdown(wait=False, cancel_futures=True)


def final_checkpoint(run: Path, steps: int) -> str:
    return f"local-dir:{Path(step_dir(str(run), steps)).resolve()}"
