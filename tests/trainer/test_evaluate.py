"""Retrieval and zero-shot metrics against hand-made embeddings whose answers are known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import identity_image, write_members
from trainer.evaluate import EvalSet, evaluate, load_eval_set, retrieval_metrics
from trainer.students import create_student


def _unit(rows: list[list[float]]) -> torch.Tensor:
    x = torch.tensor(rows, dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True)


def test_recall_counts_an_image_right_when_any_of_its_captions_is_in_the_top_k() -> None:
    images = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # Image 0 owns captions 0 and 1 (caption 1 is its best match); image 1's caption points at
    # image 2, image 2's caption points at image 2.
    texts = _unit([[0.9, 0.1, 0], [1, 0, 0], [0, 0.2, 1], [0, 0, 1]])
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(images, texts, owner)
    # image→text top-1: image 0 → caption 1 (own), image 1 → caption 2 (own), image 2 → caption 3 (own).
    assert m["image_to_text_R@1"] == pytest.approx(1.0)
    # text→image top-1: captions 0, 1 → image 0 (right), caption 2 → image 2 (wrong), caption 3 → image 2.
    assert m["text_to_image_R@1"] == pytest.approx(3 / 4)
    assert m["text_to_image_R@5"] == pytest.approx(1.0)


def test_retrieval_of_shuffled_pairs_is_at_chance_and_of_matching_pairs_perfect() -> None:
    rng = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(50, 16, generator=rng), dim=1)
    owner = torch.arange(50)
    perfect = retrieval_metrics(features, features, owner)
    assert perfect["image_to_text_R@1"] == 1.0 and perfect["text_to_image_R@1"] == 1.0
    shuffled = retrieval_metrics(features, features[torch.randperm(50, generator=rng)], owner)
    assert shuffled["image_to_text_R@1"] < 0.2


def test_zero_shot_accuracy_and_retrieval_on_a_labelled_set(tmp_path: Path) -> None:
    student = create_student("tiny", seed=0)
    members = [
        {
            "__key__": f"{i:04d}",
            "jpg": identity_image(i % 3, i, (96, 80)),
            "txt": f"thing {i % 3}\nanother caption".encode(),
            "cls": str(i % 3).encode(),
        }
        for i in range(6)
    ]
    members.append({"__key__": "broken", "jpg": b"not an image", "txt": b"x", "cls": b"0"})
    write_members(tmp_path / "0.tar", members)
    eval_set = load_eval_set([str(tmp_path / "*.tar")], student)
    assert len(eval_set.images) == 6 and eval_set.skipped == {"undecodable": 1}
    assert eval_set.images[0].shape == (3, student.image_size, student.image_size)
    result = evaluate(student, eval_set, classnames=["thing 0", "thing 1", "thing 2"], templates=["{c}"])
    assert result["num_captions"] == 12 and result["num_labelled"] == 6 and result["num_classes"] == 3
    assert 0.0 <= result["zeroshot_top1"] <= 1.0 and "zeroshot_top5" not in result  # 3 classes: no top-5
    # The class embedding of "thing k" with template "{c}" is exactly the caption "thing k"'s embedding,
    # so zero-shot must agree with text→image retrieval restricted to those captions.
    with torch.no_grad():
        images = torch.stack(eval_set.images)
        f_img = student.model.encode_image(images, normalize=True)
        f_cls = student.model.encode_text(
            student.tokenizer(["thing 0", "thing 1", "thing 2"]), normalize=True
        )
    expected = float(
        ((f_img @ f_cls.T).argmax(dim=1) == torch.tensor([i % 3 for i in range(6)])).float().mean()
    )
    assert result["zeroshot_top1"] == pytest.approx(expected)


def test_an_empty_heldout_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable image"):
        evaluate(create_student("tiny"), EvalSet([], [], [], {"undecodable": 3}))


def test_a_datacomp_caption_is_one_caption_however_many_lines(tmp_path: Path) -> None:
    """DataComp alt-texts run over lines ("...\\nshot on film") or are empty: one caption, or none."""
    texts = [b"a cat\nshot on film\n", b"", b"a dog", b"  \n"]
    members = [
        {"__key__": f"{i:04d}", "jpg": identity_image(i, i, (96, 80)), "txt": text, "json": b"{}"}
        for i, text in enumerate(texts)
    ]
    write_members(tmp_path / "0.tar", members)
    eval_set = load_eval_set([str(tmp_path / "*.tar")], create_student("tiny", seed=0))
    assert eval_set.captions == [["a cat\nshot on film"], [], ["a dog"], []]


def test_checkpoint_named_by_step_number_or_run_and_unknown_steps_listed(tmp_path: Path, capsys) -> None:
    from trainer.checkpoint import TrainingState, save_checkpoint
    from trainer.evaluate import main

    student = create_student("tiny", seed=0)
    optimizer = torch.optim.AdamW(student.model.parameters())
    run = tmp_path / "run"
    for step in (100, 200):
        save_checkpoint(str(run), student, student.model.state_dict(), optimizer, TrainingState(step, {}, {}))
    members = [{"__key__": f"{i}", "jpg": identity_image(i, i, (96, 80)), "txt": b"x"} for i in range(2)]
    (tmp_path / "heldout").mkdir()
    write_members(tmp_path / "heldout" / "0.tar", members)
    data = ["--data", str(tmp_path / "heldout" / "*.tar")]
    for name in ("checkpoints/step_200", "checkpoints/200", "checkpoints/step_00000200", ".", "checkpoints"):
        main(["--checkpoint", str(run / name), *data])
        assert '"num_images": 2' in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(run / "checkpoints" / "step_300"), *data])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no such checkpoint" in err
    assert "these exist in" in err and "step_00000100, step_00000200" in err
