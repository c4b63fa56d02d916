"""What a person watching a run sees: a live line while it runs, a summary table when it ends.

The live line polls the output folder for committed shards (their stats files), so it works the
same whatever process does the work: the in-process runner, local worker processes, or a portable
runner's workers on this machine. Shards are the unit it counts; samples/s comes from the committed
shards' sample counts.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

from shards.run_folder import RunSummary, committed_shards, read_shard_stats


class ShardProgress:
    """`with ShardProgress(output_dir, pending_shards, label="reinforcing"):` shows `label: shards done,
    samples/s, ETA` until exit; the label names the job (reinforcing, extending, joining)."""

    def __init__(
        self,
        output_dir: str,
        pending: list[str],
        *,
        label: str,
        interval: float = 1.0,
        stream: TextIO | None = None,
    ) -> None:
        self._label = label
        self._output_dir = output_dir
        self._pending = list(pending)
        self._interval = interval
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = 0
        self._start = 0.0

    def __enter__(self) -> ShardProgress:
        self._start = time.monotonic()
        self._bar = tqdm(
            total=len(self._pending),
            unit="shard",
            desc=self._label,
            file=self._stream,
            dynamic_ncols=True,
            mininterval=self._interval,
        )
        self._thread = threading.Thread(target=self._run, name="shard-progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        committed = committed_shards(self._output_dir)
        newly = [shard for shard in self._pending if shard in committed]
        for shard in newly:
            stats = read_shard_stats(self._output_dir, shard)
            self._samples += stats.num_written if stats is not None else 0
        done = len(newly)
        self._pending = [shard for shard in self._pending if shard not in committed]
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = f"{self._samples} samples, {self._samples / elapsed:.1f} samples/s"
        self._bar.set_postfix_str(rate, refresh=False)
        if done:
            self._bar.update(done)
        else:
            self._bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception:  # a progress line must never take a run down (e.g. a flaky object store)
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._poll()
        finally:
            self._bar.close()


def summary_table(summary: RunSummary, output_dir: str, wall_seconds: float, written_this_run: int) -> str:
    """A plain-text table of what the run did, what it skipped and why, and where the output is."""
    rows: list[tuple[str, str]] = [
        ("shards done", f"{summary.shards_done} / {summary.shards_total}"),
        ("samples read", str(summary.num_read)),
        ("samples written", str(summary.num_written)),
        ("samples skipped", str(summary.num_skipped)),
    ]
    if summary.filtered_out:
        rows.append(("samples filtered out", f"{summary.filtered_out} (left out by the selection)"))
    rows += [(f"  skipped: {reason}", str(count)) for reason, count in summary.skipped.items()]
    rows += [(f"  shard damage: {reason}", str(count)) for reason, count in summary.shard_errors.items()]
    if summary.missing_shards:
        rows.append(("shards not done", ", ".join(summary.missing_shards[:10])))
    rows.append(("this run", f"{written_this_run} samples in {wall_seconds:.1f} s"))
    if wall_seconds > 0 and written_this_run:
        rows.append(("throughput", f"{written_this_run / wall_seconds:.2f} samples/s end to end"))
    stage_total = sum(summary.seconds.values())
    for stage, seconds in sorted(summary.seconds.items(), key=lambda kv: -kv[1]):
        share = 100 * seconds / stage_total if stage_total else 0.0
        rows.append((f"  time in {stage}", f"{seconds:.1f} s ({share:.0f}%)"))
    rows.append(("output", output_dir))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])
