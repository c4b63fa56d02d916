"""Which input shards a run has to do: the input glob listed once, the output folder listed twice.

Bookkeeping that scales with the number of shards (`python -m bench.scale` measures it at 65,536),
kept apart from Beam and the models so that it costs only what it does.
"""

from __future__ import annotations

from collections import Counter

from shards import storage
from shards.run_config import ConfigError
from shards.run_folder import committed_shards, remove_stale_temporaries, shard_name


def find_input_shards(pattern: str, flag: str = "--input") -> list[str]:
    """Shards matching the glob, sorted; names must be unique, since outputs are named after them."""
    try:
        paths = [p for p in storage.match(pattern) if p.endswith(".tar")]
    except Exception as exc:  # Beam raises BeamIOError for an unreachable bucket or a bad scheme
        raise ConfigError(f"cannot list {flag} {pattern!r}: {exc}") from exc
    if not paths:
        raise ConfigError(f"no .tar shards match {flag} {pattern!r}{folder_hint(pattern, flag)}")
    names = Counter(shard_name(p) for p in paths)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ConfigError(
            f"{flag} shards share a name across folders ({', '.join(clashes[:5])}): outputs would clash"
        )
    return paths


def folder_hint(pattern: str, flag: str) -> str:
    """What to say when a pattern without a wildcard matched no shard: it was probably a folder."""
    if any(c in pattern for c in "*?["):
        return ""
    return f" (a folder? try {flag} '{pattern.rstrip('/')}/*.tar')"


def pending_inputs(output_dir: str, inputs: list[str]) -> list[str]:
    """The inputs whose shard is not committed yet, cleared of what a killed attempt left behind.

    Two listings of the output folder whatever the number of shards (bench/scale.py measures it).
    """
    done = committed_shards(output_dir)
    pending = [path for path in inputs if shard_name(path) not in done]
    remove_stale_temporaries(output_dir, [shard_name(path) for path in pending])
    return pending
