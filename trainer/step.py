"""One optimizer step, exact to one large batch: K micro-batches on each of W ranks count as one
batch of K·W·B samples for the contrastive and KD terms.

Without accumulation (K = 1) the micro-batch is embedded with gradient, its rows gathered from
every rank (with gradient, `World.gather_rows`) and the loss taken over all of them. With K > 1 this
is open_clip's feature cache: every micro-batch is first embedded without gradient; then each one
in turn is embedded again with gradient and put in its place among the cached rest, and the loss of
the whole step is back-propagated. The sum of those K gradients is the gradient of the large
batch's loss, since each pass lets gradient through one micro-batch only (and through the logit
scale in the first pass only). Per-micro-batch terms (CoCa's captioning loss) are cached the same
way and averaged. Then the gradients are averaged over ranks, clipped and applied.

Models with BatchNorm normalise each micro-batch by its own statistics (as in open_clip), so for
them the equivalence holds up to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.distributed import World
from trainer.objectives import Embedded, Objective, Terms
from trainer.optim import clamp_logit_scale
from trainer.precision import TrainingWeights
from trainer.students import Student

ONE_PROCESS = World()


def train_step(
    student: Student,
    weights: TrainingWeights,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    objective: Objective,
    grad_clip: float,
    world: World = ONE_PROCESS,
) -> tuple[dict[str, float], float]:
    """One optimizer step on the step's micro-batches; returns the loss terms and the gradient norm
    before clipping (both the same on every rank)."""
    optimizer.zero_grad(set_to_none=True)
    terms = accumulate_gradients(student, micro_batches, objective, world)
    weights.gradients_to_master()
    world.average_gradients(weights.parameters_with_grad())
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(weights.parameters_with_grad(), max_norm))
    optimizer.step()
    clamp_logit_scale(dict(weights.named_parameters())["logit_scale"])
    weights.master_to_model()
    return {name: float(value.detach()) for name, value in terms.items()}, grad_norm


def accumulate_gradients(
    student: Student, micro_batches: Sequence[Any], objective: Objective, world: World = ONE_PROCESS
) -> Terms:
    """Back-propagate the loss of all micro-batches of all ranks into this rank's gradients."""
    if len(micro_batches) == 1:
        terms = batch_loss(student, micro_batches[0], objective, world)
        terms["total"].backward()
        return terms
    with torch.no_grad():
        cached = [objective.embed(student, batch) for batch in micro_batches]
    count = len(micro_batches)
    for j, batch in enumerate(micro_batches):
        fresh = objective.embed(student, batch)
        parts = [fresh if i == j else cached[i] for i in range(count)]
        own = {name: sum(part.own[name] for part in parts) / count for name in fresh.own}
        scale = _logit_scale(student) if j == 0 else _logit_scale(student).detach()
        terms = _step_loss(objective, world, parts, own, scale)
        terms["total"].backward()
    return terms  # every pass has the same values


def batch_loss(student: Student, batch: Any, objective: Objective, world: World = ONE_PROCESS) -> Terms:
    """The loss terms of one micro-batch against every rank's rows (a whole step's when K = 1)."""
    embedded = objective.embed(student, batch)
    return _step_loss(objective, world, [embedded], embedded.own, _logit_scale(student))


def _logit_scale(student: Student) -> torch.Tensor:
    return student.model.logit_scale.float().exp()


def _step_loss(
    objective: Objective, world: World, parts: Sequence[Embedded], own: Terms, logit_scale: torch.Tensor
) -> Terms:
    """The loss over every rank's rows; the rows travel as one [N, sum of widths] tensor."""
    names = list(parts[0].rows)
    if not world.distributed:
        return objective.loss(
            {name: torch.cat([p.rows[name] for p in parts]) for name in names}, logit_scale, own
        )
    widths = [parts[0].rows[name].shape[1] for name in names]
    local = torch.cat([torch.cat([part.rows[name] for part in parts]) for name in names], dim=1)
    rows = dict(zip(names, world.gather_rows(local).split(widths, dim=1), strict=True))
    return objective.loss(rows, logit_scale, own)
