"""The run folder as a Hugging Face dataset: its card, and `datasets` reading the folder, the tars and the
parquet sidecars from local files (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from pipeline.reinforce import main
from shards.dataset_card import CARD_FILE, card_license, is_ours
from shards.reinforced import iter_shard

datasets = pytest.importorskip("datasets")


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---\n", 4)])


def stored_samples(folder) -> list:
    """Every sample of every shard, in order (a truncated copy of a shard repeats its uids)."""
    return [s for path in sorted(folder.glob("*.tar")) for s in iter_shard(str(path))]


def test_the_card_describes_the_run(reference_run, tiny_checkpoints, job):
    card = (reference_run / CARD_FILE).read_text()
    summary = json.loads((reference_run / "summary.json").read_text())
    front = front_matter(card)
    assert front["license"] == "unknown"
    assert front["size_categories"] == ["n<1K"]
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "????????.tar"}]
    body = card.split("\n---\n", 1)[1]
    for teacher, width in (("clip-a", 32), ("clip-b", 48)):
        assert f"| `{tiny_checkpoints[teacher]}` | {width} |" in body
    assert f"`{tiny_checkpoints['coca']}` | {job.num_captions} |" in body
    assert f"A = {job.num_views} views per image, seed 7" in body
    for reason, count in summary["skipped"].items():
        assert f"| `{reason}` | {count} |" in body
    assert f"{summary['num_written']} samples in {summary['shards_done']} of 4 shards" in body
    assert '"random_resized_crop"' in body and "| pillow |" in body
    assert "--distill-teacher-dimension 32 48" in body and "python -m trainer.train" in body
    assert is_ours(card)


def test_datasets_loads_the_folder_the_tars_and_the_parquet(reference_run, tmp_path):
    summary = json.loads((reference_run / "summary.json").read_text())
    stored = stored_samples(reference_run)
    by_key = {s.key: s for s in stored}
    folder = datasets.load_dataset(str(reference_run), split="train", cache_dir=str(tmp_path))
    assert folder.num_rows == summary["num_written"] == len(stored)
    row = folder[0]
    sample = by_key[row["__key__"]]
    assert row["__key__"] == sample.uid
    assert row["json"]["uid"] == sample.uid and row["txt"] == sample.caption
    assert row["syn.json"]["syn_text"] == sample.syn_captions["syn_text"]
    assert row["paug.json"]["view_sha"] == sample.view_sha
    # JSON numbers: the same float32 magnitudes, whatever digits the loader prints them with
    assert np.array_equal(
        np.asarray(row["paug.json"]["param_aug"][0][1], np.float32),
        np.asarray(sample.param_aug[0][1], np.float32),
    )
    assert row["jpg"].size == (sample.meta["width"], sample.meta["height"])
    assert np.array_equal(np.asarray(row["npz"]["image_emb"], np.float32), sample.image_emb)
    vectors = datasets.List(datasets.List(datasets.Value("float32"), length=sample.dim))
    assert folder.features["npz"]["image_emb"] == vectors == folder.features["npz"]["text_emb"]

    # The tars by themselves need the card's features: paug.json's views are not Arrow-inferable.
    features = datasets.load_dataset_builder(str(reference_run), cache_dir=str(tmp_path)).info.features
    tars = datasets.load_dataset(
        "webdataset",
        data_files=str(reference_run / "*.tar"),
        features=features,
        split="train",
        cache_dir=str(tmp_path),
    )
    assert sorted(tars["__key__"]) == sorted(s.key for s in stored)

    sidecar = datasets.load_dataset(
        "parquet", data_files=str(reference_run / "*.parquet"), split="train", cache_dir=str(tmp_path)
    )
    assert sorted(sidecar["uid"]) == sorted(s.uid for s in stored)
    parquet_row = next(r for r in sidecar if r["uid"] == sample.uid)
    assert json.loads(parquet_row["param_aug"]) == sample.param_aug
    assert parquet_row["syn_text"] == sample.syn_captions["syn_text"]
    assert np.array_equal(np.asarray(parquet_row["image_emb"], np.float32), sample.image_emb)
    assert sidecar.features["image_emb"] == vectors


def test_a_readme_that_is_not_ours_is_never_overwritten(reference_run, job_input, tmp_path, job, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    ours = (out / CARD_FILE).read_text()
    edited = ours.replace("\n## Teachers\n", "\nOur own words.\n\n## Teachers\n")
    for foreign in ("# My dataset\n", edited):
        (out / CARD_FILE).write_text(foreign)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        assert main(job.args(job_input[0], out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out / CARD_FILE) in err[0]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, not even a lease

    (out / CARD_FILE).unlink()
    assert main(job.args(job_input[0], out, "--license", "cc-by-4.0")) == 0
    card = (out / CARD_FILE).read_text()
    assert front_matter(card)["license"] == "cc-by-4.0"
    assert card_license(str(out), None) == "cc-by-4.0"  # a rerun without --license keeps it
    unlicensed = card.replace("license: cc-by-4.0", "license: unknown").split("\n", 2)
    assert is_ours(card) and unlicensed[2].split("-->", 1)[1] == ours.split("-->", 1)[1]
