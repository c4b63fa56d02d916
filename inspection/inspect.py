"""Summarise reinforced shards in the terminal, or as one self-contained HTML page.

Usage: `python -m pipeline.inspect PATH [--sample KEY] [--html report.html]`

PATH is a shard, a glob of shards, or an output folder (local, gs://, s3://). The HTML report has
the notebook's pictures (both draw with `inspection.figures`) with every image inlined as a
`data:` URI, and a content security policy that forbids fetching anything: it opens offline, from
an e-mail attachment or a bucket, exactly as written.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from collections.abc import Sequence

from matplotlib.figure import Figure
from PIL import Image

from inspection import figures
from inspection.overview import DEFAULT_LIMIT, ShardOverview, load_overview, sample_lines, summary_lines
from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.reinforced import ReinforcedSample
from shards.storage import parse_known_beam_args
from shards.teacher_slices import parse_teacher_dims
from shards.write_guard import EXIT_REFUSED, OutputRefused, check_output_file
from transforms import BadImageError, decode_image

DEFAULT_SHOW = 3
# Marks a page as one of our reports, so that --html replaces only those (shards/write_guard.py).
GENERATOR = '<meta name="generator" content="datacompdr-reinforce pipeline.inspect">'
# Formats every browser shows as they are; anything else is re-encoded as PNG for the page.
_BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
img.original { max-height: 320px; width: auto; }
section.sample { border-top: 1px solid #ccc; margin-top: 1.5em; }
"""


def shown_samples(overview: ShardOverview, sample_key: str | None, show: int) -> list[ReinforcedSample]:
    if sample_key is None:
        return overview.samples[:show]
    found = overview.find(sample_key)
    return [found] if found is not None else []


def render_html(overview: ShardOverview, samples: list[ReinforcedSample]) -> str:
    """The report page: summary, run stats, histograms, then each shown sample's views and heatmaps."""
    slices, version = overview.slices, overview.param_aug_version
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        GENERATOR,
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>Shard report: {html.escape(overview.run.path)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Shard report: {html.escape(overview.run.path)}</h1>",
        _pre(summary_lines(overview, show=0)),
        "<h2>Run stats</h2>",
        _figure(figures.stats_figure(overview), "skips by reason and time per stage"),
    ]
    if overview.samples and slices:
        parts += [
            "<h2>Embeddings</h2>",
            _figure(figures.norms_figure(overview.samples, slices), "per-teacher embedding norms"),
            _figure(
                figures.similarity_histogram_figure(overview.samples, slices),
                "view-caption similarities",
            ),
        ]
    for sample in samples:
        parts += [
            '<section class="sample">',
            f"<h2>Sample {html.escape(sample.key)}</h2>",
            _original(sample),
            _figure(
                figures.views_figure(sample, overview.augmenter, version=version),
                f"replayed views of {sample.key}",
            ),
        ]
        if slices:
            parts.append(_figure(figures.similarity_figure(sample, slices), f"similarities of {sample.key}"))
        parts += [_pre(sample_lines(sample, slices, version)), "</section>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _pre(lines: list[str]) -> str:
    return f"<pre>{html.escape(chr(10).join(lines))}</pre>"


def _figure(fig: Figure, alt: str) -> str:
    return _img(figures.figure_png(fig), "image/png", alt)


def _img(data: bytes, mime: str, alt: str, css_class: str = "") -> str:
    source = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    attribute = f' class="{css_class}"' if css_class else ""
    return f'<img{attribute} alt="{html.escape(alt)}" src="{source}">'


def _original(sample: ReinforcedSample) -> str:
    """The stored image bytes as they are, when a browser can show them; else its decoded pixels as PNG."""
    if not sample.image:
        return "<p>No image stored (published DataCompDR layout: images are fetched from url.txt).</p>"
    try:
        with Image.open(io.BytesIO(sample.image)) as probe:
            mime = _BROWSER_FORMATS.get(probe.format or "")
    except Exception:
        mime = None
    if mime is not None:
        return _img(sample.image, mime, f"stored image of {sample.key}", "original")
    try:
        image = decode_image(sample.image)
    except BadImageError as error:
        return f"<p>The stored image does not decode ({html.escape(error.reason)}).</p>"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _img(buffer.getvalue(), "image/png", f"stored image of {sample.key} (as PNG)", "original")


def is_our_report(start: bytes) -> bool:
    """A page this command wrote (its first few kB): the generator line, or, in reports from before
    it, the title and content security policy they all begin with."""
    text = start.decode("utf-8", "replace")
    older = text.startswith("<!doctype html>") and "Content-Security-Policy" in text
    return GENERATOR in text or (older and "<title>Shard report: " in text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a shard, a glob of shards, or an output folder (local, gs://, s3://)")
    parser.add_argument("--sample", metavar="KEY", help="show everything about this sample")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report here")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="samples decoded for the histograms and norms (default %(default)s)",
    )
    parser.add_argument(
        "--show", type=int, default=DEFAULT_SHOW, help="samples shown in full (default %(default)s)"
    )
    parser.add_argument(
        "--teacher-dims",
        type=parse_teacher_dims,
        metavar="D1,D2",
        help="teacher widths, for shards without config.json (e.g. 768,768)",
    )
    args = parse_known_beam_args(parser, argv)  # any Beam filesystem option: --s3_endpoint_url, ...
    with exit_on_interrupt(lambda: "nothing was written (the report is written only when complete)"):
        try:
            if args.html:
                check_output_file(args.html, "--html", is_our_report, "a report written by pipeline.inspect")
            return _inspect(args)
        except OutputRefused as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_REFUSED


def _inspect(args: argparse.Namespace) -> int:
    overview = load_overview(
        args.path, limit=args.limit, sample_key=args.sample, teacher_dims=args.teacher_dims
    )
    if not overview.run.shards:
        print(f"no .tar shard found at {args.path}", file=sys.stderr)
        return 2
    samples = shown_samples(overview, args.sample, args.show)
    if args.sample is not None:
        if not samples:
            print(f"no sample with key {args.sample!r} in {args.path}", file=sys.stderr)
            return 1
        print("\n".join(sample_lines(samples[0], overview.slices, overview.param_aug_version)))
    else:
        print("\n".join(summary_lines(overview, show=args.show)))
    if args.html:
        try:
            storage.write_text_atomic(args.html, render_html(overview, samples))
        except OSError as error:  # a read-only or full disk, a folder without permission
            print(f"error: cannot write --html {args.html}: {error}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
