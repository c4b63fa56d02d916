"""Fail within seconds, not minutes, when a gs:// or s3:// path cannot work: no credentials, or an
endpoint nothing answers on.

Beam's clients treat both as transient and retry with backoff (about 2 minutes for gs://, 8 for
s3://) before the real cause surfaces. This check looks only at what is configured locally (flags,
environment, credential files) and opens one short TCP connection per endpoint; it never asks a
cloud metadata server. Where such a server is the credential source (a GCE or EC2 machine, a
container with a credentials endpoint), its presence is taken from local signs and trusted.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from apache_beam.options.pipeline_options import PipelineOptions, S3Options

CONNECT_TIMEOUT_S = 3.0
GCS_HOST = "storage.googleapis.com"
# Set where a metadata or container endpoint serves credentials (GKE, Cloud Run, App Engine, ECS).
_GCP_METADATA_ENV = ("GCE_METADATA_HOST", "GCE_METADATA_IP", "K_SERVICE", "GAE_ENV")
_AWS_CONTAINER_ENV = ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
_DMI = Path("/sys/class/dmi/id")


class RemoteAccessError(ValueError):
    """A gs:// or s3:// path this command needs cannot be reached; the message says what to set."""


def remote_paths(values: Iterable[object]) -> list[str]:
    """The gs:// and s3:// strings among parsed flag values (lists included)."""
    found = []
    for value in values:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str) and item.startswith(("gs://", "s3://")):
                found.append(item)
    return found


def check_remote_access(paths: Iterable[str], beam_args: list[str] | PipelineOptions) -> None:
    """Raise RemoteAccessError within seconds if any of `paths` cannot be reached as configured."""
    options = beam_args if isinstance(beam_args, PipelineOptions) else PipelineOptions(beam_args)
    problems: list[str] = []
    by_scheme: dict[str, str] = {}
    for path in paths:
        by_scheme.setdefault(path.split("://", 1)[0], path)  # one check per store
    if "gs" in by_scheme:
        problems += _gcs_problems(by_scheme["gs"])
    if "s3" in by_scheme:
        problems += _s3_problems(by_scheme["s3"], options.view_as(S3Options))
    if problems:
        raise RemoteAccessError("; ".join(problems))


def check_cli_remote_access(
    parser: argparse.ArgumentParser, args: argparse.Namespace, beam_args: list[str]
) -> None:
    """For a CLI: check every gs:// / s3:// path among its parsed flags; exit 2 with the cause."""
    try:
        check_remote_access(remote_paths(vars(args).values()), beam_args)
    except RemoteAccessError as error:
        parser.error(str(error))


def _gcs_problems(path: str) -> list[str]:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:  # google-cloud-storage talks to it without credentials
        target = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        return _unreachable(path, target.hostname or "", target.port or 80, "STORAGE_EMULATOR_HOST")
    if not _has_gcp_credentials():
        return [
            f"no credentials for {path}: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
            "file, or run `gcloud auth application-default login`"
        ]
    return _unreachable(path, GCS_HOST, 443, "your network")


def _has_gcp_credentials() -> bool:
    keyfile = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if keyfile:
        return Path(keyfile).is_file()
    config = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    if (config / "application_default_credentials.json").is_file():
        return True
    return any(os.environ.get(name) for name in _GCP_METADATA_ENV) or _dmi_says("Google")


def _s3_problems(path: str, s3: S3Options) -> list[str]:
    import botocore.session

    session = botocore.session.Session()
    problems = []
    if not (s3.s3_access_key_id and s3.s3_secret_access_key) and not _has_aws_credentials(session):
        problems.append(
            f"no credentials for {path}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE "
            "with ~/.aws/credentials), or pass --s3_access_key_id and --s3_secret_access_key"
        )
    endpoint = (
        s3.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        url = urlparse(endpoint)
        port = url.port or (80 if url.scheme == "http" else 443)
        problems += _unreachable(path, url.hostname or "", port, "--s3_endpoint_url (or AWS_ENDPOINT_URL)")
    else:
        region = s3.s3_region_name or session.get_config_variable("region") or "us-east-1"
        problems += _unreachable(
            path, f"s3.{region}.amazonaws.com", 443, "--s3_region_name / --s3_endpoint_url"
        )
    return problems


def _has_aws_credentials(session: object) -> bool:
    """Credentials from flags-free sources (environment, profiles, SSO, web identity), without
    contacting the instance metadata service."""
    if any(os.environ.get(name) for name in _AWS_CONTAINER_ENV) or _dmi_says("Amazon"):
        return True
    resolver = session.get_component("credential_provider")  # type: ignore[attr-defined]
    for name in ("iam-role", "container-role"):
        resolver.remove(name)  # the metadata services: judged above from local signs only
    try:
        return resolver.load_credentials() is not None
    except Exception:  # a broken profile is no usable credential either
        return False


def _dmi_says(vendor: str) -> bool:
    """Whether the machine's firmware names the cloud (how GCE and EC2 machines identify themselves)."""
    for name in ("sys_vendor", "product_name", "bios_vendor"):
        try:
            if vendor in (_DMI / name).read_text():
                return True
        except OSError:
            continue
    return False


def _unreachable(path: str, host: str, port: int, setting: str) -> list[str]:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return []
    except OSError as error:
        why = f"{type(error).__name__}: {error}"
        return [f"endpoint {host}:{port} unreachable for {path} ({why}); check {setting}"]
