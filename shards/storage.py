"""Paths through Beam FileSystems, so local, gs:// and s3:// read and write alike.

Every write goes to a hidden temporary sibling and is renamed into place only when complete: a
reader (or a resumed run) never sees a half-written file under its final name.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from shards.remote_access import check_cli_remote_access

RAW = CompressionTypes.UNCOMPRESSED  # never let a `.gz` name trigger transparent decompression


def use_filesystem_options(beam_args: list[str] | PipelineOptions) -> None:
    """Set what gs:// and s3:// clients are built from in this process (`--s3_endpoint_url`, ...).

    Without any, Beam's S3 client refuses to start; with an empty list it falls back to the
    environment's credentials, as boto3 and google-auth do.
    """
    options = beam_args if isinstance(beam_args, PipelineOptions) else PipelineOptions(beam_args)
    FileSystems.set_options(options)


def match(pattern: str, limit: int | None = None) -> list[str]:
    """Paths matching a glob, sorted so that every runner sees the same order (with `limit`, only
    that many are listed: a look, not the whole folder)."""
    if limit is not None:
        return sorted(m.path for m in FileSystems.match([pattern], limits=[limit])[0].metadata_list)
    return sorted(match_updated(pattern))


def match_updated(pattern: str) -> dict[str, float]:
    """Paths matching a glob, each with when it was last written (seconds since the epoch), from the
    same listing: no request per path."""
    # Beam lists the folder before a pattern's first wildcard, and for `DATACOMP*/*.tar` that folder is
    # the empty string, which lists nothing: a relative local pattern is matched from `./`.
    relative = "://" not in pattern and not posixpath.isabs(pattern) and not pattern.startswith("./")
    result = FileSystems.match(["./" + pattern if relative else pattern])[0]
    return {
        m.path.removeprefix("./") if relative else m.path: m.last_updated_in_seconds
        for m in result.metadata_list
    }


def exists(path: str) -> bool:
    if _is_s3_object(path):
        return _s3_object_exists(path)
    return FileSystems.exists(path)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def dirname(path: str) -> str:
    return FileSystems.split(path)[0]


def open_read(path: str) -> BinaryIO:
    return FileSystems.open(path, compression_type=RAW)


def read_bytes(path: str) -> bytes:
    if _is_s3_object(path):
        bucket, key = _s3_bucket_key(path)
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def delete(path: str) -> None:
    """Delete a file; a missing one is not an error."""
    if FileSystems.exists(path):
        FileSystems.delete([path])


def delete_all(paths: list[str]) -> None:
    """Delete existing files in one call (on S3, one request per 1,000 keys)."""
    if paths:
        FileSystems.delete(paths)


def create_temporary(path: str) -> tuple[str, BinaryIO]:
    """Open a hidden sibling of `path` for writing (globs like `*.tar` never match it); `commit`
    renames it into place. `path`'s folder is created if missing."""
    directory, name = FileSystems.split(path)
    if directory and not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
    tmp = FileSystems.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
    return tmp, FileSystems.create(tmp, compression_type=RAW)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Yield a binary file that appears as `path` only if the block exits cleanly."""
    tmp, f = create_temporary(path)
    try:
        yield f
        f.close()
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise
    commit(tmp, path)


def commit(tmp: str, path: str) -> None:
    """Move a finished temporary file to its final name, replacing an older file (never a folder:
    Beam would delete a whole local folder in its place)."""
    if FileSystems.exists(path):
        if os.path.isdir(path):
            FileSystems.delete([tmp])
            raise IsADirectoryError(errno.EISDIR, "a folder is where the file would go", path)
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_bytes_atomic(path: str, data: bytes) -> None:
    if not data and path.startswith("s3://"):
        _put_empty_s3_object(path)
        return
    with atomic_write(path) as f:
        f.write(data)


def _put_empty_s3_object(path: str) -> None:
    """Beam's S3 writer cannot make an empty object (it completes a multipart upload with no parts,
    which S3 refuses), so a zero-byte file is one plain PUT (atomic on S3)."""
    bucket, key = _s3_bucket_key(path)
    _s3_client().put_object(Bucket=bucket, Key=key, Body=b"")


# Beam's S3 filesystem builds a new boto3 session and client for every call (about 0.1-0.5 s of CPU),
# which dwarfs the request itself when a run reads tens of thousands of small stats files. Small
# reads and existence checks therefore go through one client per process and S3 settings (boto3
# clients are thread-safe); listings, streams and writes stay Beam's.
_S3_CLIENTS: dict[tuple[tuple[str, str], ...], Any] = {}
_S3_CLIENTS_LOCK = threading.Lock()


_S3_SETTINGS = (
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_session_token",
    "s3_endpoint_url",
    "s3_region_name",
    "s3_api_version",
    "s3_verify",
    "s3_disable_ssl",
)  # fmt: skip  (what Beam's boto3 client is built from)


def _is_s3_object(path: str) -> bool:
    """An `s3://bucket/key` path naming an object (not a bucket or a folder)."""
    bucket, key = _s3_bucket_key(path)
    return path.startswith("s3://") and bool(bucket) and bool(key) and not key.endswith("/")


def _s3_bucket_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.removeprefix("s3://").partition("/")
    return bucket, key


def _s3_client() -> Any:
    """This process's boto3 S3 client for the filesystem options in force, built from the same
    options as Beam's, with a connection pool as large as the thread pools that share it."""
    import boto3
    from botocore.config import Config

    options = FileSystems._pipeline_options or PipelineOptions([])
    s3 = options.view_as(S3Options)
    key = tuple((name, str(getattr(s3, name))) for name in _S3_SETTINGS)
    with _S3_CLIENTS_LOCK:
        if key not in _S3_CLIENTS:
            _S3_CLIENTS[key] = boto3.session.Session().client(
                "s3",
                region_name=s3.s3_region_name,
                api_version=s3.s3_api_version,
                use_ssl=not s3.s3_disable_ssl,
                verify=s3.s3_verify,
                endpoint_url=s3.s3_endpoint_url,
                aws_access_key_id=s3.s3_access_key_id,
                aws_secret_access_key=s3.s3_secret_access_key,
                aws_session_token=s3.s3_session_token,
                config=Config(max_pool_connections=32),
            )
        return _S3_CLIENTS[key]


def _s3_object_exists(path: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = _s3_bucket_key(path)
    try:
        _s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def parse_known_beam_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Our flags into the namespace; the rest, as `beam_args`, must be Beam options (typos are refused)
    and set the filesystem options of this process, so gs:// and s3:// paths work in every CLI (and
    a gs:// or s3:// flag value that cannot work stops the CLI at once)."""
    args, beam_args = parser.parse_known_args(argv)
    unusable = unusable_beam_args(beam_args)
    if unusable:
        parser.error(f"unrecognized arguments: {' '.join(unusable)}")
    use_filesystem_options(beam_args)
    check_cli_remote_access(parser, args, beam_args)  # no credentials / no endpoint: exit in seconds
    args.beam_args = beam_args
    return args


def unusable_beam_args(beam_args: list[str]) -> list[str]:
    """Arguments neither we nor Beam understand: Beam would drop them with a log line, we refuse them.

    A mistyped flag (`--num-view 3`) or an unquoted glob that the shell expanded into several paths
    would otherwise run a job with settings the user did not ask for.
    """
    if any(arg in ("--runner=DaskRunner", "DaskRunner") for arg in beam_args):
        import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers the --dask_* options)
    known = PipelineOptions(beam_args).get_all_options(display_warnings=False)
    retained = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True, display_warnings=False)
    names = {name.split("=", 1)[0] for name in set(retained) - set(known)}
    # as typed (`--on-mismatches`), not as Beam stores the name (`on_mismatches`)
    unknown = sorted(
        {arg.split("=", 1)[0] for arg in beam_args if arg.startswith("--") and _option_name(arg) in names}
    )
    stray = [
        arg
        for i, arg in enumerate(beam_args)
        if not arg.startswith("-")
        and (i == 0 or not beam_args[i - 1].startswith("--") or "=" in beam_args[i - 1])
    ]
    return unknown + stray


def _option_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")
