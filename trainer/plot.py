"""The per-step JSONL log and the loss-curve picture drawn from it.

Usage: `python -m trainer.plot RUN/log.jsonl RUN/loss.png`
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from typing import Any

from shards import storage
from shards.write_guard import EXIT_REFUSED, OutputRefused, check_output_file

CURVES = ("total", "kd_original", "kd_synthetic", "clip_original", "clip_synthetic", "caption")
SOFTWARE = "datacompdr-reinforce trainer.plot"  # the PNG's Software text: a picture of ours
_PNG = b"\x89PNG\r\n\x1a\n"


def read_log(path: str) -> list[dict[str, Any]]:
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def write_log(path: str, records: Sequence[dict[str, Any]]) -> None:
    storage.write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def plot_losses(records: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss parts and the learned logit scale against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r["step"] for r in records]
    figure, (losses, scale) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for name in CURVES:
        if records and name in records[0]:
            losses.plot(steps, [r[name] for r in records], label=name, linewidth=1)
    losses.set_ylabel("loss")
    losses.legend(loc="upper right", fontsize="small")
    losses.grid(alpha=0.3)
    scale.plot(steps, [r.get("logit_scale", float("nan")) for r in records], color="black", linewidth=1)
    scale.set_ylabel("logit scale")
    scale.set_xlabel("step")
    scale.grid(alpha=0.3)
    if title:
        losses.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": SOFTWARE})
    plt.close(figure)
    storage.write_bytes_atomic(path, buffer.getvalue())


def is_our_plot(start: bytes) -> bool:
    """A loss picture of ours: its Software text, or (drawn before it) a PNG without any."""
    return start.startswith(_PNG) and (SOFTWARE.encode() in start or b"Software" not in start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.plot", description="Draw a training run's loss curves."
    )
    parser.add_argument("log", help="RUN/log.jsonl")
    parser.add_argument(
        "png", help="output picture (a new file, or a loss picture of ours, which is replaced)"
    )
    args = parser.parse_args(argv)
    try:
        check_output_file(args.png, "PNG", is_our_plot, "a loss picture drawn by this project")
    except OutputRefused as error:
        parser.exit(EXIT_REFUSED, f"error: {error}\n")
    plot_losses(read_log(args.log), args.png, title=args.log)


if __name__ == "__main__":
    main()
