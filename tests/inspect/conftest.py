"""Reinforced shards and run folders for the inspect/validate tests, built from the bundled raw shards.

Views are sampled with the real augmenter (so crop boxes fit the real images), embeddings are seeded
random unit vectors per teacher slice, and run files are written with the job's own writers. This
keeps these tests fast and independent of the models; the real job's output is used where it matters
(see `reinforced_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shards.raw import RawSample, SkippedSample, iter_raw_shard
from shards.reinforced import IMAGE_SHA256, ReinforcedSample, write_shard
from shards.run_config import config_bytes
from shards.run_folder import ShardStats, finalize_run, write_shard_outcome
from shards.writer import ShardWriter
from tests.support import reinforced_sample
from transforms import DATACOMPDR_AUGMENTATION, ViewAugmenter, decode_image

REPO = Path(__file__).resolve().parents[2]
TEACHER_DIMS = (32, 48)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    layout: str = "v1"
    embedding_dtype: str = "fp32"
    dims: tuple[int, ...] = TEACHER_DIMS
    num_views: int = 3
    num_captions: int = 2
    shards: tuple[str, ...] = ("00000000.tar",)
    max_samples: int | None = 6
    view_size: int = 64


def augmentation(view_size: int) -> dict:
    recipe = json.loads(json.dumps(DATACOMPDR_AUGMENTATION))
    recipe["random_resized_crop"]["size"] = view_size
    return recipe


def reinforce_raw(raw: RawSample, spec: RunSpec, seed: int = 0) -> ReinforcedSample:
    """A sample as the job would write it, with random (but unit-norm) embeddings."""
    image = decode_image(raw.image)
    meta = {**raw.meta, "uid": raw.uid, "width": image.width, "height": image.height}
    meta.setdefault("sha256", "0" * 64)
    meta[IMAGE_SHA256] = hashlib.sha256(raw.image).hexdigest()
    return reinforced_sample(
        raw.uid,
        raw.image,
        raw.caption,
        dims=spec.dims,
        views=spec.num_views,
        captions=spec.num_captions,
        family="syn_text" if spec.layout == "v1" else "syn_text_coca",
        augmenter=ViewAugmenter.from_config(augmentation(spec.view_size)),
        seed=seed,
        meta=meta,
        url=raw.url,
        image_ext=raw.image_ext,
        synthetic=[f"a synthetic caption {k} of {raw.key}" for k in range(spec.num_captions)],
    )


def run_config(spec: RunSpec) -> dict:
    return {
        "schema_version": 1,
        "layout": spec.layout,
        "embedding_dtype": spec.embedding_dtype,
        "teachers": [
            {"spec": f"local-dir:/tiny/{name}", "name": name, "dim": dim, "kd_logit_scale": 100.0}
            for name, dim in zip(("clip-a", "clip-b"), spec.dims, strict=False)
        ],
        "captioner": {"spec": "local-dir:/tiny/coca", "num_captions": spec.num_captions},
        "caption_family": "syn_text" if spec.layout == "v1" else "syn_text_coca",
        "reinforce": {"image_augmentation": augmentation(spec.view_size)},
        "num_views": spec.num_views,
        "num_captions": spec.num_captions,
        "param_aug_version": 1,
        "seed": 0,
        "preset": "test",
        "versions": {},
    }


def build_samples(
    raw_dir: Path, shard: str, spec: RunSpec
) -> tuple[list[ReinforcedSample], list[SkippedSample], int]:
    """(samples, skip records, samples read) of one raw shard; skips beyond max_samples are 'test_limit'."""
    samples, skips, read = [], [], 0
    for item in iter_raw_shard(str(raw_dir / shard)):
        if isinstance(item, SkippedSample):
            if not item.whole_shard:
                read += 1
                skips.append(item)
            continue
        read += 1
        if spec.max_samples is not None and len(samples) >= spec.max_samples:
            skips.append(SkippedSample(item.key, "test_limit"))
            continue
        samples.append(reinforce_raw(item, spec))
    return samples, skips, read


def build_run(raw_dir: Path, out: Path, spec: RunSpec = RunSpec(), *, run_files: bool = True) -> Path:
    """An output folder as the job writes it (tar, parquet, errors, stats, config, manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for shard in spec.shards:
        name = shard.removesuffix(".tar")
        names.append(name)
        samples, skips, read = build_samples(raw_dir, shard, spec)
        if not run_files:
            write_shard(str(out / shard), samples, spec.layout, spec.embedding_dtype)
            continue
        with ShardWriter(
            str(out / shard), str(out / f"{name}.parquet"), spec.layout, spec.embedding_dtype
        ) as writer:
            for sample in samples:
                writer.write(sample)
        stats = ShardStats(
            shard=name, input_path=str(raw_dir / shard), num_read=read, num_written=len(samples)
        )
        for record in skips:
            stats.skipped[record.reason] = stats.skipped.get(record.reason, 0) + 1
        stats.seconds = {"read": 0.01, "decode": 0.02, "embed_images": 0.5}
        write_shard_outcome(str(out), stats, skips)
    if run_files:
        (out / "config.json").write_bytes(config_bytes(run_config(spec)))
        finalize_run(str(out), names)
    return out


@pytest.fixture
def make_run(sample_raw_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(*, run_files: bool = True, **spec: Any) -> Path:
        """`make_run(layout="v2", dims=(64, 64), run_files=False)`: fields of RunSpec as keywords."""
        return build_run(
            sample_raw_dir, tmp_path / f"run{next(counter)}", RunSpec(**spec), run_files=run_files
        )

    return make


@pytest.fixture(scope="session")
def reinforced_run(sample_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real job's output on the first bundled raw shard (tiny preset), made once per session."""
    out = tmp_path_factory.mktemp("reinforced") / "out"
    command = [
        sys.executable, "-m", "pipeline.reinforce",
        "--input", str(sample_raw_dir / "00000000.tar"), "--output", str(out),
        "--preset", "tiny", "--runner", "DirectRunner",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"the job failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out


# -- a headless browser for the HTML report -----------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


@dataclasses.dataclass
class PageReport:
    """What a person would see go wrong: images that did not render, and errors the page logged."""

    images: list[dict[str, Any]]
    errors: list[str]


class Chromium:
    """Chromium driven over the DevTools protocol, on loopback only, with a fresh profile."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        self.port = int(port_file.read_text().splitlines()[0])

    def open(self, url: str, timeout: float = 60) -> PageReport:
        """Load `url` in a new tab; report its images and every error logged while it loaded."""
        import websocket  # websocket-client

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            target = json.load(response)
        connection = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout)
        errors: list[str] = []
        ids = iter(range(1, 10_000))

        def call(
            method: str, params: dict[str, Any] | None = None, until: str | None = None
        ) -> dict[str, Any]:
            number = next(ids)
            connection.send(json.dumps({"id": number, "method": method, "params": params or {}}))
            result: dict[str, Any] = {}
            waiting_for_reply, waiting_for_event = True, until is not None
            while waiting_for_reply or waiting_for_event:
                message = json.loads(connection.recv())
                if message.get("id") == number:
                    result, waiting_for_reply = message.get("result", {}), False
                elif message.get("method") == until:
                    waiting_for_event = False
                else:
                    errors.extend(_page_errors(message))
            return result

        try:
            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable")
            call("Page.navigate", {"url": url}, until="Page.loadEventFired")
            script = (
                "JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})))"
            )
            value = call("Runtime.evaluate", {"expression": script, "returnByValue": True})
            images = json.loads(value["result"]["value"])
        finally:
            connection.close()
        return PageReport(images=images, errors=errors)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _page_errors(message: dict[str, Any]) -> list[str]:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        return [f"exception: {params['exceptionDetails'].get('text')}"]
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return [f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}"]
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        return [f"log ({params['entry'].get('source')}): {params['entry'].get('text')}"]
    return []


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Debian's chromium (`apt-get install chromium`); only a machine that cannot have it skips."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = (
            "chromium is not installed: `make browser` (apt-get install --no-install-recommends chromium)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)
    pytest.importorskip("websocket", reason="websocket-client (requirements-dev.txt) drives chromium")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()
