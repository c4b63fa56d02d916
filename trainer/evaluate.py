"""Zero-shot classification and image↔text retrieval of a student on held-out shards.

The held-out set is a folder of tars in any of the layouts we meet: raw img2dataset shards (image,
`txt`, `json`), our reinforced shards (the same members and more), or CLIP-benchmark webdatasets
(image, `cls` label, `txt` with one caption per line; `classnames.txt` and
`zeroshot_classification_templates.txt` beside the `test/` folder). A DataComp sample (it has a
`json`) has one caption, its alt-text, even when that runs over several lines. Retrieval needs
captions, classification needs labels and class names; each is reported when its inputs are there.

Usage: `python -m trainer.evaluate --checkpoint RUN/checkpoints/step_N --data 'HELDOUT/*.tar'` (N as
written in the folder name, `step_00000200`, or just `200`; `--checkpoint RUN` takes the latest).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import open_clip
import torch

from shards import storage
from shards.interrupt import exit_on_interrupt
from shards.reinforced import IMAGE_MEMBERS, iter_members
from shards.storage import parse_known_beam_args
from teachers.devices import DEVICE_HELP, DeviceError, parse_device, resolve_device
from teachers.specs import LOCAL_DIR
from trainer.checkpoint import CheckpointError, find_checkpoint
from trainer.data import DataError, list_shards, skip_reason
from trainer.students import Student, StudentError, create_student
from transforms import decode_image

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DEFAULT_TEMPLATES = (
    "a photo of a {c}.",
    "a bad photo of a {c}.",
    "a photo of the {c}.",
    "a picture of a {c}.",
)
RECALL_AT = (1, 5)


@dataclasses.dataclass
class EvalSet:
    images: list[torch.Tensor]  # preprocessed for the student
    captions: list[list[str]]  # per image, possibly empty
    labels: list[int | None]
    skipped: dict[str, int]


def load_eval_set(patterns: Sequence[str], student: Student, limit: int | None = None) -> EvalSet:
    """Decode held-out samples with the student's own eval preprocessing; bad ones are counted."""
    preprocess = open_clip.image_transform(
        student.image_size,
        is_train=False,
        mean=student.mean,
        std=student.std,
        resize_mode=student.preprocess_cfg.get("resize_mode"),
        interpolation=student.preprocess_cfg.get("interpolation"),
    )
    images, captions, labels = [], [], []
    skipped: collections.Counter[str] = collections.Counter()
    for shard in list_shards(patterns):
        if limit is not None and len(images) >= limit:
            break  # else every later shard would still be opened and its first sample read
        try:
            for members in iter_members(shard):
                if limit is not None and len(images) >= limit:
                    break
                member = next((m for m in IMAGE_MEMBERS if m in members), None)
                if member is None:
                    skipped["missing_image"] += 1
                    continue
                try:
                    image = preprocess(decode_image(members[member]))
                    texts = _captions(members.get("txt"), one_per_line="json" not in members)
                    label = int(members["cls"]) if "cls" in members else None
                except Exception as error:
                    skipped[skip_reason(error)] += 1
                    continue
                images.append(image)
                captions.append(texts)
                labels.append(label)
        except Exception:
            skipped["unreadable_tar"] += 1
    return EvalSet(images, captions, labels, dict(skipped))


def _captions(data: Any, *, one_per_line: bool) -> list[str]:
    """CLIP-benchmark `txt` holds one caption per line; a DataComp sample's (it has a `json`) is one
    alt-text, which may run over several lines. Empty captions are none."""
    if data is None:
        return []
    text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    if not one_per_line:
        return [text.strip()] if text.strip() else []
    return [line.strip() for line in text.splitlines() if line.strip()]


@torch.no_grad()
def _embed_images(student: Student, images: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    weight = next(student.model.parameters())
    out = [
        student.model.encode_image(
            torch.stack(images[i : i + batch_size]).to(device=weight.device, dtype=weight.dtype),
            normalize=True,
        ).float()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).cpu()


@torch.no_grad()
def _embed_texts(student: Student, texts: list[str], batch_size: int) -> torch.Tensor:
    device = next(student.model.parameters()).device
    out = [
        student.model.encode_text(
            student.tokenizer(texts[i : i + batch_size]).to(device), normalize=True
        ).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out).cpu()


def retrieval_metrics(
    image_features: torch.Tensor, text_features: torch.Tensor, text_owner: torch.Tensor
) -> dict:
    """Recall@k both ways; `text_owner[t]` is the image caption t belongs to (an image may own several)."""
    similarity = image_features @ text_features.T  # [images, texts]
    metrics = {}
    for k in RECALL_AT:
        top_texts = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # [images, k]
        hit_i2t = (text_owner[top_texts] == torch.arange(similarity.shape[0])[:, None]).any(dim=1)
        top_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices  # [texts, k]
        hit_t2i = (top_images == text_owner[:, None]).any(dim=1)
        metrics[f"image_to_text_R@{k}"] = float(hit_i2t.float().mean())
        metrics[f"text_to_image_R@{k}"] = float(hit_t2i.float().mean())
    return metrics


def classifier_weights(
    student: Student, classnames: Sequence[str], templates: Sequence[str], batch_size: int
) -> torch.Tensor:
    """One unit vector per class: the normalised mean of its templated prompts' embeddings."""
    weights = []
    for name in classnames:
        prompts = [t.replace("{c}", name) for t in templates]
        mean = _embed_texts(student, prompts, batch_size).mean(dim=0)
        weights.append(mean / mean.norm())
    return torch.stack(weights)


def evaluate(
    student: Student,
    eval_set: EvalSet,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
) -> dict[str, Any]:
    if not eval_set.images:
        raise ValueError(f"the held-out set has no usable image (skipped: {eval_set.skipped})")
    was_training = student.model.training
    student.model.eval()
    try:
        image_features = _embed_images(student, eval_set.images, batch_size)
        result: dict[str, Any] = {"num_images": len(eval_set.images), "skipped": eval_set.skipped}
        texts = [c for caps in eval_set.captions for c in caps]
        if texts:
            owner = torch.tensor([i for i, caps in enumerate(eval_set.captions) for _ in caps])
            with_text = torch.tensor([bool(caps) for caps in eval_set.captions])
            text_features = _embed_texts(student, texts, batch_size)
            result["num_captions"] = len(texts)
            # Images without a caption cannot be retrieved correctly; leave them out of image→text.
            kept = with_text.nonzero().squeeze(1)
            remap = torch.full((len(eval_set.images),), -1, dtype=torch.long)
            remap[kept] = torch.arange(len(kept))
            result.update(retrieval_metrics(image_features[kept], text_features, remap[owner]))
        labelled = [i for i, label in enumerate(eval_set.labels) if label is not None]
        if labelled and classnames:
            weights = classifier_weights(student, classnames, templates, batch_size)
            labels = torch.tensor([eval_set.labels[i] for i in labelled])
            if int(labels.max()) >= len(classnames) or int(labels.min()) < 0:
                raise ValueError(
                    f"labels reach {int(labels.max())} but there are {len(classnames)} class names"
                )
            logits = image_features[labelled] @ weights.T
            for k in (1, 5):
                if k <= len(classnames):
                    top = logits.topk(k, dim=1).indices
                    result[f"zeroshot_top{k}"] = float((top == labels[:, None]).any(dim=1).float().mean())
            result["num_labelled"] = len(labelled)
            result["num_classes"] = len(classnames)
        return result
    finally:
        student.model.train(was_training)


def find_side_file(patterns: Sequence[str], name: str) -> str | None:
    """CLIP-benchmark keeps class names and templates beside the split folder (or in it)."""
    folder = storage.dirname(patterns[0])
    for candidate in (storage.join(folder, name), storage.join(storage.dirname(folder.rstrip("/")), name)):
        try:
            if storage.exists(candidate):
                return candidate
        except Exception:
            continue
    return None


def read_lines(path: str) -> list[str]:
    return [line.strip() for line in storage.read_text(path).splitlines() if line.strip()]


def evaluate_on(
    student: Student,
    patterns: Sequence[str],
    classnames_path: str | None = None,
    templates_path: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Load the held-out shards (and side files when present) and evaluate."""
    classnames_path = classnames_path or find_side_file(patterns, CLASSNAMES_FILE)
    templates_path = templates_path or find_side_file(patterns, TEMPLATES_FILE)
    classnames = read_lines(classnames_path) if classnames_path else None
    templates = read_lines(templates_path) if templates_path else list(DEFAULT_TEMPLATES)
    return evaluate(student, load_eval_set(patterns, student, limit), classnames, templates)


def student_name(checkpoint: str) -> str:
    """What `--checkpoint` names for create_student: a model name as is, a path as its step folder."""
    if checkpoint.startswith(LOCAL_DIR):
        checkpoint = checkpoint.removeprefix(LOCAL_DIR)
    elif "/" not in checkpoint and not storage.exists(checkpoint):
        return checkpoint  # tiny, or an open_clip architecture
    return LOCAL_DIR + find_checkpoint(checkpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Zero-shot classification and retrieval of a trained student.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="RUN/checkpoints/step_N (N as 200 or 00000200), RUN for its latest checkpoint, or a model name",
    )
    parser.add_argument(
        "--pretrained", default=None, help="pretrained tag, when --checkpoint is a model name"
    )
    parser.add_argument(
        "--data", required=True, nargs="+", help="held-out shard patterns (local, gs://, s3://)"
    )
    parser.add_argument("--classnames", default=None, help=f"one class per line (default: {CLASSNAMES_FILE})")
    parser.add_argument("--templates", default=None, help="prompt templates with {c} (default: CLIP's)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    parser.add_argument("--device", type=parse_device, default="auto", help=DEVICE_HELP)
    args = parse_known_beam_args(parser, argv)  # also sets gs:// / s3:// endpoints and credentials
    with exit_on_interrupt(lambda: "evaluate writes nothing; run it again to evaluate"):
        try:
            list_shards(args.data)  # the held-out data and side files first: a wrong path fails at once
            for flag, path in (("--classnames", args.classnames), ("--templates", args.templates)):
                if path and not storage.exists(path):
                    raise DataError(f"{flag} {path}: no such file")
            device = resolve_device(args.device)
            student = create_student(student_name(args.checkpoint), pretrained=args.pretrained)
            student.model.to(device)
            result = evaluate_on(student, args.data, args.classnames, args.templates, args.limit)
        except (CheckpointError, StudentError, DeviceError, DataError, ValueError) as error:
            parser.exit(2, f"error: {error}\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
