"""`python -m pipeline.inspect`: the terminal summary, `--sample`, and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from inspection import figures
from inspection import inspect as inspect_cli
from inspection.overview import load_overview


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = inspect_cli.main(args)
    return code, capsys.readouterr().out


def data_uris(page: str) -> list[tuple[str, bytes]]:
    return [(m, base64.b64decode(d)) for m, d in re.findall(r'src="data:([\w/+.-]+);base64,([^"]+)"', page)]


def test_terminal_summary_of_a_run_folder(make_run, capsys) -> None:
    run = make_run(shards=("00000000.tar", "00000001.tar"))
    code, out = run_cli([str(run)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "shards: 2, samples: 12" in lines
    assert "layout: v1, embeddings: npz (fp32)" in lines
    assert "teachers (config), D = 80:" in lines
    assert any(line.startswith("  clip-a: dim 32 (columns 0:32), KD logit scale 100.0") for line in lines)
    assert any(line.startswith("  clip-b: dim 48 (columns 32:80)") for line in lines)
    assert "stats: read 24, written 12, skipped 12" in lines  # the fixture keeps 6 of 12 per shard
    assert "  skipped test_limit: 12" in lines
    assert any(line.startswith("  time per stage: decode 0.04s, embed_images 1.00s") for line in lines)
    # three samples shown by default, each with its original caption and both synthetic ones
    assert sum(line.startswith("sample ") for line in lines) == 3
    assert "  caption: Astronaut Eileen Collins in her orange flight suit, official NASA portrait" in lines
    assert sum(line.startswith("  syn_text: a synthetic caption") for line in lines) == 6


def test_public_shard_summary_infers_teachers(make_run, capsys) -> None:
    shard = make_run(layout="v2", embedding_dtype="bf16", dims=(64, 64), run_files=False) / "00000000.tar"
    code, out = run_cli([str(shard), "--show", "1"], capsys)
    assert code == 0
    assert "run: no config.json beside the shards (a public or copied shard)" in out
    assert "layout: v2, embeddings: pth.gz (bf16)" in out
    assert "teachers (inferred from norms), D = 128:" in out
    assert "  syn_text_coca: a synthetic caption 1 of" in out


def test_sample_details(make_run, capsys) -> None:
    run = make_run(shards=("00000001.tar",))
    overview = load_overview(str(run))
    last = overview.samples[-1]
    code, out = run_cli([str(run), "--sample", last.key, "--limit", "1"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"sample {last.key}")
    views = [line for line in lines if line.startswith("  view ")]
    assert len(views) == 3 and all(line.startswith(f"  view {k}: crop top ") for k, line in enumerate(views))
    # one similarity row per view for each teacher, one column per caption (original + 2 synthetic)
    rows = [line.split() for line in lines if re.fullmatch(r"    ([+-]\d\.\d{3} ?){3}", line)]
    assert len(rows) == 2 * 3
    expected = figures.similarities(last, overview.slices[0])
    assert [float(v) for v in rows[0]] == pytest.approx(expected[0].tolist(), abs=5e-4)


def test_unknown_sample_fails(make_run, capsys) -> None:
    code, _ = run_cli([str(make_run()), "--sample", "no-such-key"], capsys)
    assert code == 1


def test_html_report_is_self_contained(make_run, tmp_path: Path, capsys) -> None:
    run = make_run()
    report = tmp_path / "report.html"
    code, out = run_cli([str(run), "--html", str(report), "--show", "2"], capsys)
    assert code == 0 and out.endswith(f"wrote {report}\n")
    page = report.read_text()
    images = data_uris(page)
    # stats, norms, similarities; then per sample: stored image, views, heatmaps
    assert len(images) == 3 + 2 * 3
    assert page.count("<img") == len(images), "every image is inlined"
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "default-src 'none'" in page
    overview = load_overview(str(run))
    assert overview.samples[0].image in [data for _, data in images], "the stored image, byte for byte"
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for mime, data in images if mime == "image/png")


def test_html_report_for_published_shards_without_images(make_run, tmp_path: Path, capsys) -> None:
    from shards.reinforced import iter_members, open_tar_writer

    shard = make_run(dims=(64, 64), run_files=False) / "00000000.tar"
    samples = list(iter_members(str(shard)))
    with shard.open("wb") as f:
        writer = open_tar_writer(f)
        for members in samples:
            writer.write({k: v for k, v in members.items() if k not in ("jpg", "txt")})
        writer.close()
    report = tmp_path / "published.html"
    code, out = run_cli([str(shard), "--html", str(report), "--show", "1"], capsys)
    assert code == 0
    assert "caption: (none stored)" in out
    page = report.read_text()
    assert "No image stored (published DataCompDR layout" in page
    assert len(data_uris(page)) == 3 + 2  # no stored image; the views panel says there is nothing to replay


@pytest.mark.slow
def test_report_opens_in_chromium_with_every_image_shown(make_run, tmp_path: Path, chromium, capsys) -> None:
    report = tmp_path / "report.html"
    assert run_cli([str(make_run()), "--html", str(report)], capsys)[0] == 0
    page = chromium.open(report.as_uri())
    assert page.errors == []
    assert len(page.images) == 3 + 3 * 3
    assert all(image["complete"] and image["naturalWidth"] > 0 for image in page.images), page.images


@pytest.mark.slow
def test_browser_check_sees_broken_images_and_errors(tmp_path: Path, chromium) -> None:
    """The browser test above can fail: a broken image and a script error are both caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><html><body><img alt="broken" src="data:image/png;base64,bm90IGFuIGltYWdl">'
        '<script>console.error("boom"); undefinedFunction();</script></body></html>'
    )
    result = chromium.open(page.as_uri())
    assert [image["naturalWidth"] for image in result.images] == [0]
    assert any("boom" in error for error in result.errors)
    assert any("undefinedFunction" in error or "exception" in error for error in result.errors)


@pytest.mark.slow
def test_report_of_the_real_job_output(reinforced_run: Path, tmp_path: Path, chromium, capsys) -> None:
    report = tmp_path / "real.html"
    code, out = run_cli([str(reinforced_run), "--html", str(report), "--show", "2"], capsys)
    assert code == 0
    config = json.loads((reinforced_run / "config.json").read_text())
    assert f"views {config['num_views']}, captions {config['num_captions']}" in out
    page = chromium.open(report.as_uri())
    assert page.errors == []
    assert len(page.images) == 3 + 2 * 3
    assert all(image["naturalWidth"] > 0 for image in page.images), page.images
