"""Benchmark of the job's own bookkeeping at DataComp-1B scale: tens of thousands of shards.

    python -m bench.scale [--sizes 4096,16384,65536] [--backends local,s3]

For each size N: N tiny raw shards (1 KiB empty tars: the bookkeeping never opens them), an output
folder where half of them are committed (errors and stats files written by run_folder's own
writers) and a few killed attempts left temporaries behind. Then, in a fresh process, the launcher's
bookkeeping exactly as `run_job` calls it, timed phase by phase:

  list      find_input_shards: the input glob
  pending   pending_inputs: committed shards, stale temporaries of the pending ones removed
  finalize  finalize_run: every committed stats file read, manifest.jsonl and summary.json written
  outcome   run_result: what the launcher reads back for its summary table (summary.json and
            manifest.jsonl, checked against a listing of the stats files, not every stats file again)

on local disk and on S3 (a moto server on 127.0.0.1, one per size, in this process so that set-up
puts the objects straight into its store; set-up is not measured, the measuring process talks to
the server over HTTP). On S3 every request is counted by operation, to show that a listing costs
one request per 1,000-key page, not one per shard. Beam's S3 filesystem builds a new boto3 client
for every call: the S3 runs also time a few small reads through Beam's FileSystems beside
`shards.storage.read_bytes`, which keeps one client per process. Targets: list + pending + finalize
<= 60 s locally and <= 5 min on S3 for 65,536 shards, peak RSS <= 1 GB, seconds per shard flat
across sizes. Measured on moto, finalize's one GET per committed shard is most of the S3 time (moto
spends about 3 ms of CPU on each; more threads do not help), then the listings (about 0.5 s per
page). The peak RSS includes about 860 MB of imports (torch's CUDA build alone is about 700 MB,
pulled in by webdataset), printed apart.

The machine is shared (2 cores, other jobs running), so figures move between runs. The last line
printed is one JSON object: the largest size's figures, and every size's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.pipeline import peak_rss_kb

REPO = Path(__file__).resolve().parent.parent
EMPTY_TAR = b"\0" * 1024  # two zero blocks: a valid, empty tar
STALE_EVERY = 64  # one pending shard in this many has a temporary left by a killed attempt
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
BEAM_S3_READS = 64  # small reads timed through Beam's own S3 filesystem (a client per call)


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- set-up (not measured)


def build_local(root: Path, size: int) -> tuple[Path, Path]:
    """`raw/` with `size` tiny shards; `out/` with every other shard committed and a few temporaries."""
    from shards.run_folder import ShardStats, write_shard_outcome

    raw, out = root / "raw", root / "out"
    raw.mkdir(parents=True)
    out.mkdir(parents=True)
    for index in range(size):
        (raw / f"{index:08d}.tar").write_bytes(EMPTY_TAR)
    for index in range(0, size, 2):
        shard = f"{index:08d}"
        stats = ShardStats(shard=shard, input_path=str(raw / f"{shard}.tar"), num_read=10, num_written=9)
        stats.skipped = {"image_too_small": 1}
        stats.seconds = {"caption": 1.5, "embed_images": 2.0}
        write_shard_outcome(str(out), stats, [])
    for index in range(1, size, 2 * STALE_EVERY):
        (out / f".{index:08d}.tar.tmp-{index:032x}").write_bytes(b"half")
    return raw, out


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on loopback, in this process (a thread), so set-up can fill its store directly;
    stopped and emptied on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        moto_store().reset()


def moto_store() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def upload(folder: Path, bucket: str, prefix: str) -> int:
    """Every file of `folder` (hidden ones too) under a new bucket's prefix, put straight into the
    in-process moto server's store: through its HTTP front, 200k objects took over an hour."""
    store = moto_store()
    store.create_bucket(bucket, CREDENTIALS["region_name"])
    files = sorted(folder.iterdir())
    for path in files:
        store.put_object(bucket, f"{prefix}/{path.name}", path.read_bytes())
    return len(files)


# ---------------------------------------------------------------- measured, in a fresh process


def count_requests() -> Counter[str]:
    """Count every S3 request this process sends, by operation (all clients, Beam's included)."""
    from botocore.endpoint import Endpoint

    counts: Counter[str] = Counter()
    lock = threading.Lock()
    send = Endpoint.make_request

    def counted(self: Endpoint, operation_model: Any, request_dict: Any) -> Any:
        with lock:
            counts[operation_model.name] += 1
        return send(self, operation_model, request_dict)

    Endpoint.make_request = counted  # type: ignore[method-assign]
    return counts


def measure(raw: str, out: str, beam_args: list[str]) -> dict[str, Any]:
    """The launcher's bookkeeping on one folder, phase by phase, as run_job does it."""
    from shards import storage
    from shards.run_folder import finalize_run, output_paths, run_result, shard_name
    from shards.run_inputs import find_input_shards, pending_inputs

    storage.use_filesystem_options(beam_args)
    baseline_mb = current_rss_kb() / 1024  # Beam, torch and the job's modules, before any work
    requests = count_requests() if raw.startswith("s3://") else Counter()
    figures: dict[str, Any] = {}
    phases: dict[str, float] = {}

    def phase(name: str, action: Any) -> Any:
        before = Counter(requests)
        start = time.perf_counter()
        result = action()
        phases[name] = time.perf_counter() - start
        if requests:
            figures[f"{name}_requests"] = dict(sorted((requests - before).items()))
        return result

    inputs = phase("list", lambda: find_input_shards(storage.join(raw, "*.tar")))
    shards = [shard_name(path) for path in inputs]
    pending = phase("pending", lambda: pending_inputs(out, inputs))
    summary = phase("finalize", lambda: finalize_run(out, shards))
    outcome, written = phase("outcome", lambda: run_result(out, shards))
    assert len(inputs) == len(shards) and len(written) == summary.shards_done == len(shards) - len(pending)
    assert outcome.to_dict() == summary.to_dict(), "the read-back differs from what finalize wrote"
    assert summary.num_written == 9 * summary.shards_done
    assert storage.match(storage.join(out, ".*.tmp-*")) == [], "stale temporaries were left"
    figures.update(
        shards=len(inputs),
        pending=len(pending),
        seconds={name: round(value, 3) for name, value in phases.items()},
        bookkeeping_seconds=round(phases["list"] + phases["pending"] + phases["finalize"], 3),
        peak_rss_mb=round(peak_rss_kb() / 1024, 1),
        baseline_rss_mb=round(baseline_mb, 1),
    )
    if raw.startswith("s3://"):
        paths = [output_paths(out, shard)["stats"] for shard in sorted(written)[:BEAM_S3_READS]]
        figures["read_ms_shared_client"] = round(
            1000 * timed(lambda: [storage.read_bytes(p) for p in paths]) / len(paths), 2
        )
        figures["read_ms_beam_filesystem"] = round(
            1000 * timed(lambda: [beam_read(p) for p in paths]) / len(paths), 2
        )
    return figures


def current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def beam_read(path: str) -> bytes:
    """A small read the way Beam's filesystem does it: exists, then open (a new client for each)."""
    from apache_beam.io.filesystems import FileSystems

    assert FileSystems.exists(path)
    with FileSystems.open(path) as f:
        return f.read()


def timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_child(raw: str, out: str, beam_args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.scale", "--child-raw", raw, "--child-out", out, "--", *beam_args]
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def report(backend: str, size: int, figures: dict[str, Any]) -> None:
    seconds = figures["seconds"]
    per_k = 1000 * figures["bookkeeping_seconds"] / size
    log(
        f"{backend:5s} {size:6d} shards ({figures['pending']} pending): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
        + f" | list+pending+finalize {figures['bookkeeping_seconds']:.1f} s = {per_k:.2f} s per 1000 shards"
        f" | peak RSS {figures['peak_rss_mb']:.0f} MB"
        f" ({figures['peak_rss_mb'] - figures['baseline_rss_mb']:.0f} MB over the imports)"
    )
    if backend == "s3":
        listings = {k: v.get("ListObjectsV2", 0) for k, v in figures.items() if k.endswith("_requests")}
        log(f"      listing requests per phase: {listings} (pages of 1,000 keys: {math.ceil(size / 1000)})")
        log(
            f"      a small read: {figures['read_ms_shared_client']:.1f} ms with one client per process, "
            f"{figures['read_ms_beam_filesystem']:.1f} ms through Beam's S3 filesystem (a client per call)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4096,16384,65536", help="numbers of input shards")
    parser.add_argument("--backends", default="local,s3", help="local, s3 or both")
    parser.add_argument("--s3-sizes", help="sizes to run on S3 (default: --sizes)")
    parser.add_argument("--child-raw", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args, beam_args = parser.parse_known_args(argv)
    beam_args = [a for a in beam_args if a != "--"]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never ask a metadata server for credentials
    if args.child_raw:
        print(json.dumps(measure(args.child_raw, args.child_out, beam_args)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    backends = args.backends.split(",")
    s3_sizes = sorted(int(s) for s in (args.s3_sizes or args.sizes).split(","))
    log("bench.scale: figures from one run on a shared 2-core machine; expect them to move between runs")
    results: dict[str, dict[int, dict[str, Any]]] = {backend: {} for backend in backends}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{size}-") as scratch:
            start = time.perf_counter()
            raw, out = build_local(Path(scratch), size)
            log(f"set-up: {size} raw shards, {size // 2} committed, in {time.perf_counter() - start:.0f} s")
            if "s3" in backends and size in s3_sizes:
                with moto_server() as endpoint:
                    start = time.perf_counter()
                    objects = upload(raw, "datacomp", "raw") + upload(out, "reinforced", "run")
                    log(f"set-up: {objects} objects uploaded to S3 in {time.perf_counter() - start:.0f} s")
                    s3_args = [
                        "--s3_endpoint_url", endpoint, "--s3_access_key_id", CREDENTIALS["aws_access_key_id"],
                        "--s3_secret_access_key", CREDENTIALS["aws_secret_access_key"],
                        "--s3_region_name", CREDENTIALS["region_name"],
                    ]  # fmt: skip
                    results["s3"][size] = run_child("s3://datacomp/raw", "s3://reinforced/run", s3_args)
                    report("s3", size, results["s3"][size])
            if "local" in backends:
                results["local"][size] = run_child(str(raw), str(out), [])
                report("local", size, results["local"][size])
            shutil.rmtree(scratch, ignore_errors=True)

    figures: dict[str, Any] = {"shards": sizes[-1], "cpu_count": os.cpu_count()}
    for backend in backends:
        per_size = results[backend]
        measured = sorted(per_size)
        smallest, largest = measured[0], measured[-1]
        figures[f"{backend}_shards"] = largest
        figures[f"{backend}_seconds"] = per_size[largest]["bookkeeping_seconds"]
        figures[f"{backend}_peak_rss_mb"] = per_size[largest]["peak_rss_mb"]
        figures[f"{backend}_per_size"] = per_size
        growth = (per_size[largest]["bookkeeping_seconds"] / largest) / (
            per_size[smallest]["bookkeeping_seconds"] / smallest
        )
        figures[f"{backend}_seconds_per_shard_ratio_largest_to_smallest"] = round(growth, 2)
        log(f"{backend}: seconds per shard at {largest} / at {smallest} = {growth:.2f} (linear: ~1)")
        limit = 60 if backend == "local" else 300
        seconds = figures[f"{backend}_seconds"]
        log(f"target: {backend} at {largest} shards: {seconds:.1f} s (<= {limit} s at 65,536)")
    figures["peak_rss_mb"] = max(figures[f"{b}_peak_rss_mb"] for b in backends)
    log(f"peak RSS {figures['peak_rss_mb']:.0f} MB (<= 1024)")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
