"""Negative controls break exactly the link between stored views and image embeddings, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.controls import write_control
from shards.reinforced import ReinforcedSample, iter_shard, write_shard


def _read(folder: Path) -> dict:
    return {s.key: s for path in sorted(folder.glob("*.tar")) for s in iter_shard(str(path))}


def _sample(index: int, rng: np.random.Generator) -> ReinforcedSample:
    def unit(rows: int) -> np.ndarray:
        v = rng.normal(size=(rows, 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return ReinforcedSample(
        key=f"{index:032x}",
        image=b"not decoded here",
        caption=f"caption {index}",
        meta={"uid": f"{index:032x}"},
        param_aug=[[[0, 0, 10 + k, 10 + k], [[k, 0.0]]] for k in range(3)],
        image_emb=unit(3),
        caption_emb=unit(1)[0],
        syn_captions={"syn_text": [f"synthetic {index}"]},
        syn_emb={"syn_text": unit(1)},
    )


def _source(tmp_path: Path) -> tuple[Path, dict]:
    source = tmp_path / "reinforced"
    source.mkdir()
    rng = np.random.default_rng(0)
    for shard in range(2):
        write_shard(str(source / f"{shard:08d}.tar"), [_sample(6 * shard + i, rng) for i in range(6)])
    (source / "config.json").write_text(json.dumps({"layout": "v1", "embedding_dtype": "fp32"}))
    return source, _read(source)


def test_shuffled_moves_every_image_embedding_to_another_sample(tmp_path: Path) -> None:
    source, original = _source(tmp_path)
    counts = write_control(str(source), str(tmp_path / "shuffled"), "shuffled")
    shuffled = _read(tmp_path / "shuffled")
    assert counts == {"samples": 12, "skipped": 0} and shuffled.keys() == original.keys()
    assert (tmp_path / "shuffled" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    own = {key: s.image_emb.tobytes() for key, s in original.items()}
    for key, sample in shuffled.items():
        assert sample.image_emb.tobytes() != own[key]
        assert sample.image_emb.tobytes() in own.values()
        assert sample.param_aug == original[key].param_aug and sample.caption == original[key].caption
        np.testing.assert_array_equal(sample.caption_emb, original[key].caption_emb)


def test_permuted_rotates_views_against_their_embeddings(tmp_path: Path) -> None:
    source, original = _source(tmp_path)
    write_control(str(source), str(tmp_path / "permuted"), "permuted")
    for key, sample in _read(tmp_path / "permuted").items():
        before = original[key]
        np.testing.assert_array_equal(sample.image_emb, before.image_emb)
        assert sorted(map(json.dumps, sample.param_aug)) == sorted(map(json.dumps, before.param_aug))
        assert all(a != b for a, b in zip(sample.param_aug, before.param_aug, strict=True))
