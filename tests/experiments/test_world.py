"""The shape world is valid raw img2dataset output (contract §1), deterministic, and says what it shows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from experiments import world
from shards.raw import RawSample, iter_raw_shard
from shards.reinforced import iter_members

SIZES = {"clean": 20, "single": 20, "web": 60, "test": 12}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, world.build_world(out, SIZES, seed=5)


def test_every_split_reads_back_with_no_skip(built: tuple[Path, dict]) -> None:
    out, summary = built
    for split, count in SIZES.items():
        (tar,) = sorted((out / split).glob("*.tar"))
        items = list(iter_raw_shard(str(tar)))
        assert all(isinstance(item, RawSample) for item in items), split
        assert len(items) == count == summary[split]["samples"]
        stats = json.loads(tar.with_name(f"{tar.stem}_stats.json").read_text())
        rows = pq.read_table(tar.with_suffix(".parquet")).to_pylist()
        assert stats["count"] == len(rows) == count + world.FAILED_PER_SHARD
        assert stats["successes"] == count
        assert {r["uid"] for r in rows} >= {item.uid for item in items}
        assert [item.key for item in items] != sorted(item.key for item in items)  # completion order


@pytest.mark.parametrize("split", ["clean", "single"])
def test_clean_captions_describe_the_scene_in_varying_detail(built: tuple[Path, dict], split: str) -> None:
    out, _ = built
    details, objects = set(), set()
    for item in iter_raw_shard(str(out / split / "00000000.tar")):
        scene = item.meta["scene"]
        objects.add(len(scene["things"]))
        assert world.names_every_object(item.caption, scene), item.caption
        for thing in scene["things"]:
            thing = world.Thing(**thing)
            # whatever detail a caption gives about an object is true
            assert thing.phrase(size=False, position=False) in item.caption
            details.add(thing.phrase() in item.caption)
        words = set(item.caption.split())
        assert words & set(world.BACKGROUNDS) <= {scene["background"]}, item.caption
        details.add(item.caption.endswith("background"))
    assert details == {True, False}  # full captions and terse ones ("red circle") both occur
    assert objects == ({1} if split == "single" else {1, 2})


def test_test_captions_say_everything(built: tuple[Path, dict]) -> None:
    out, _ = built
    for item in iter_raw_shard(str(out / "test" / "00000000.tar")):
        (thing,) = item.meta["scene"]["things"]
        assert (
            item.caption
            == f"{world.Thing(**thing).phrase()} on {item.meta['scene']['background']} background"
        )


def test_web_captions_are_a_noisy_mix(built: tuple[Path, dict]) -> None:
    out, summary = built
    kinds = summary["web"]["caption_kinds"]
    assert set(kinds) == {"accurate", "partial", "unrelated"} and sum(kinds.values()) == SIZES["web"]
    wrong = 0
    for item in iter_raw_shard(str(out / "web" / "00000000.tar")):
        if item.meta["caption_kind"] != "accurate":
            wrong += (
                item.caption
                != world.Scene(
                    tuple(world.Thing(**t) for t in item.meta["scene"]["things"]),
                    item.meta["scene"]["background"],
                ).caption()
            )
    assert wrong == kinds["partial"] + kinds["unrelated"]


def test_test_split_is_labelled_for_zero_shot(built: tuple[Path, dict]) -> None:
    out, _ = built
    classnames = (out / "test" / world.CLASSNAMES_FILE).read_text().splitlines()
    assert len(classnames) == len(world.COLOURS) * len(world.SHAPES)
    assert (out / "test" / world.TEMPLATES_FILE).read_text().count("{c}") == len(world.TEMPLATES)
    for members in iter_members(str(out / "test" / "00000000.tar")):
        meta = json.loads(members["json"])
        (thing,) = meta["scene"]["things"]
        assert classnames[int(members["cls"])] == f"{thing['colour']} {thing['shape']}"


def test_same_seed_same_bytes(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    world.build_world(tmp_path, {"web": SIZES["web"]}, seed=5)
    for path in (out / "web").iterdir():
        assert (tmp_path / "web" / path.name).read_bytes() == path.read_bytes(), path.name
