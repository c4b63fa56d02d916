"""`trainer.dataset`: the README's own-training-loop example runs as written on a tiny open_clip model,
and gives exactly the trainer's batches and loss."""

from __future__ import annotations

import json
import re

import pytest
import torch

from teachers.tiny import local_dir_spec, write_random_checkpoint
from tests.conftest import REPO
from tests.support import ShardSpec
from trainer.data import ReinforcedStream
from trainer.objectives import reinforced_objective
from trainer.step import batch_loss
from trainer.students import TINY_MODEL_CFG, TINY_PREPROCESS_CFG, create_student


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (example,) = [block for block in blocks if "open_reinforced" in block]
    return example


@pytest.mark.slow  # two loader processes: 2-7 s
def test_the_readme_example_trains_one_step_with_the_trainers_stream_and_loss(make_shards, tmp_path):
    spec = ShardSpec()
    folder, _ = make_shards(views=spec.views)
    teachers = [{"dim": dim, "kd_logit_scale": 100.0} for dim in spec.dims]
    (folder / "config.json").write_text(json.dumps({"teachers": teachers}))
    student = local_dir_spec(
        write_random_checkpoint(tmp_path / "student", TINY_MODEL_CFG, TINY_PREPROCESS_CFG, seed=0)
    )
    code = readme_example().replace("OUT/", f"{folder}/").replace('"MobileCLIP2-S0"', repr(student))
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    model, stream, batch = scope["model"], scope["stream"], scope["batch"]

    assert type(stream) is ReinforcedStream and isinstance(stream, torch.utils.data.IterableDataset)
    assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 64, 64)
    assert batch.teacher_image.shape == (len(batch), sum(spec.dims))
    assert stream.settings.teacher_dims == spec.dims
    trained = create_student(student)  # the trainer's own student, untouched by the step
    changed = [
        name
        for (name, after), before in zip(
            model.state_dict().items(), trained.model.state_dict().values(), strict=True
        )
        if not torch.equal(after, before)
    ]
    assert changed, "the optimizer step changed no weight"

    # The example's loss is the trainer's step loss (same slices, λ, families) on the same batch and weights.
    from trainer.dataset import reinforced_loss_of

    objective = reinforced_objective(stream.settings.slices, 1.0)
    assert torch.equal(
        reinforced_loss_of(trained.model, batch, stream), batch_loss(trained, batch, objective)["total"]
    )
