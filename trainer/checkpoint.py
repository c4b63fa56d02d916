"""Checkpoints: student weights as an open_clip `local-dir:` folder, optimizer tensors as safetensors,
and a small JSON with the step, the optimizer's scalars and the data cursor.

`state.json` is written last: a folder without it is an interrupted save and is ignored, so a crash
while saving leaves the previous checkpoint as the one to resume from. Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shards import storage
from teachers.specs import OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE
from trainer.students import Student

CHECKPOINTS = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"step_(\d{8})$")
_STEP_NAME = re.compile(r"(?:step_)?(\d+)")  # how a user may name a step folder


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (unreadable, or from a different run)."""


@dataclasses.dataclass
class TrainingState:
    step: int  # optimizer steps done
    run: dict[str, Any]  # the settings that define the run; a resume must match them
    data: dict[str, Any]  # trainer.data.DataCursor.to_json()
    optimizer_groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def step_dir(output: str, step: int) -> str:
    return storage.join(output, CHECKPOINTS, f"step_{step:08d}")


def save_checkpoint(
    output: str,
    student: Student,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    keep: int = 2,
) -> str:
    """Write step_N/ (weights, open_clip config, optimizer, then state.json); keep the last `keep`."""
    folder = step_dir(output, state.step)
    weights = {name: t.detach().contiguous() for name, t in weights.items()}
    storage.write_bytes_atomic(
        storage.join(folder, OPEN_CLIP_WEIGHTS_FILE), save_safetensors(_unaliased(weights))
    )
    config = json.dumps(student.open_clip_config(), indent=2, sort_keys=True) + "\n"
    storage.write_text_atomic(storage.join(folder, OPEN_CLIP_CONFIG_FILE), config)
    tensors, groups = _split_optimizer_state(optimizer.state_dict())
    storage.write_bytes_atomic(storage.join(folder, OPTIMIZER_FILE), save_safetensors(tensors))
    state.optimizer_groups = groups
    storage.write_text_atomic(
        storage.join(folder, STATE_FILE), json.dumps(dataclasses.asdict(state), indent=2)
    )
    for old in completed_steps(output)[:-keep] if keep > 0 else []:
        _delete_folder(step_dir(output, old))
    return folder


def completed_steps(output: str) -> list[int]:
    """Steps of the checkpoints whose save finished (state.json present), ascending."""
    try:
        found = storage.match(storage.join(output, CHECKPOINTS, "step_*", STATE_FILE))
    except Exception:
        return []
    steps = []
    for path in found:
        match = _STEP_DIR.search(storage.dirname(path).rstrip("/"))
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def find_checkpoint(path: str) -> str:
    """The step folder `path` names: a folder holding a saved student, `RUN/checkpoints/step_N` with
    N written any way (`step_200`, `200`, `step_00000200`), or a run (or its checkpoints folder),
    meaning its latest checkpoint. Raises CheckpointError naming the checkpoints that do exist."""
    path = path.rstrip("/")
    if storage.exists(storage.join(path, OPEN_CLIP_CONFIG_FILE)):
        return path
    parent, base = storage.dirname(path), storage.basename(path)
    asked = _STEP_NAME.fullmatch(base)
    run = storage.dirname(parent) if asked else path
    if not asked and base == CHECKPOINTS:
        run = parent
    steps = completed_steps(run)
    if asked and int(asked.group(1)) in steps:
        return step_dir(run, int(asked.group(1)))
    if not asked and steps:
        return step_dir(run, steps[-1])
    there = ", ".join(storage.basename(step_dir(run, step)) for step in steps)
    where = storage.join(run, CHECKPOINTS)
    found = f"these exist in {where}: {there}" if steps else f"{where} holds no completed checkpoint"
    raise CheckpointError(f"no such checkpoint: {path}; {found}")


def load_checkpoint(
    folder: str, optimizer: torch.optim.Optimizer
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Restore the optimizer in place; return the saved training state and the fp32 weights."""
    try:
        state = TrainingState(**json.loads(storage.read_text(storage.join(folder, STATE_FILE))))
        weights = load_safetensors(storage.read_bytes(storage.join(folder, OPEN_CLIP_WEIGHTS_FILE)))
        tensors = load_safetensors(storage.read_bytes(storage.join(folder, OPTIMIZER_FILE)))
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {folder}: {type(error).__name__}: {error}") from error
    optimizer.load_state_dict(_join_optimizer_state(tensors, state.optimizer_groups))
    return state, weights


def _unaliased(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights); give each its own copy."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().contiguous()
    return tensors, json.loads(json.dumps(state["param_groups"]))


def _join_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = tensor
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": per_param, "param_groups": groups}


def _delete_folder(folder: str) -> None:
    # state.json first: a folder whose deletion is interrupted is no longer a checkpoint.
    for name in (STATE_FILE, OPTIMIZER_FILE, OPEN_CLIP_WEIGHTS_FILE, OPEN_CLIP_CONFIG_FILE):
        storage.delete(storage.join(folder, name))
    try:
        storage.delete(folder)
    except Exception:  # object stores have no folders; a local one may hold foreign files
        return
