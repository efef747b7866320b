"""One batch of a run: every method explains the same images for the same classes, then the metrics score them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hdm_lightning.contract import Attribution, RunContext
from hdm_lightning.evaluation import MetricSuite
from hdm_lightning.explainers.result import Explanation
from hdm_lightning.run.plan import MethodRun
from hdm_lightning.targets import PrototypeTarget, parse_target

__all__ = ["MethodBatch", "batch_targets", "explain_batch"]


@dataclass
class MethodBatch:
    """One method's output on one batch (tensors on the CPU).

    Attributes:
        todo: positions in the batch whose outputs this method has not written yet.
        maps: the maps of the whole batch, ``[B, 1, H, W]``.
        result: the call's :class:`~hdm_lightning.contract.Attribution` (cost; maps on the images' device).
        explanation: DM/HDM/MDM's explanation on the CPU, else ``None``.
        metrics: per image, the metric values (``{}`` without metrics).
    """

    todo: list[int]
    maps: Tensor
    result: Attribution
    explanation: Explanation | None
    metrics: list[dict] = field(default_factory=list)


def batch_targets(model, images: Tensor, labels: Sequence[int], target: Any) -> Tensor:
    """The output every method explains for each image (``target:``, :func:`~hdm_lightning.targets.parse_target`).

    The predicted class (``"predicted"``), the dataset's label (``"label"``), or a prototype (``model`` is then the
    :class:`~hdm_lightning.models.prototype.PrototypeUnits` of the run).
    """
    target = parse_target(target)
    if target == "label":
        return torch.tensor(list(labels), device=images.device)
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            if isinstance(target, PrototypeTarget):
                return target.targets(model.net, images)
            return model(images).argmax(1)
        finally:
            model.train(was)


def explain_batch(
    runs: list[MethodRun],
    images: Tensor,
    targets: Tensor,
    ids: list[str],
    masks: list[Tensor | None],
    context_for: Callable[[MethodRun], RunContext],
    suite: MetricSuite | None = None,
) -> Iterator[tuple[MethodRun, MethodBatch]]:
    """Explain ``images`` for ``targets`` with each method that has not finished every image of the batch.

    A generator: each method's output is yielded as soon as it is scored, so the caller writes it before the next
    method starts (an interruption loses at most the method in flight).

    Args:
        runs: the run's methods (their records say what is finished).
        images: ``[B, C, H, W]`` on the run's device.
        targets: the class to explain per image, ``[B]``.
        ids: the images' ids (what the records are keyed by; they seed the stability metric's noise).
        masks: ground-truth masks per image (``None`` where there is none), for the mask metrics.
        context_for: the :class:`~hdm_lightning.contract.RunContext` each method's call gets (logger,
            callbacks, its checkpoint folder).
        suite: the metrics to score the maps with (``stability`` calls the method again, without a context).

    Yields:
        ``(run, MethodBatch)`` for each method that has work in the batch, in the order of ``runs``.
    """
    for run in runs:
        todo = [i for i, item_id in enumerate(ids) if item_id not in run.finished]
        if not todo:
            continue
        result = run.method.explain(images, targets, context_for(run))
        explanation = result.explanation.cpu() if result.explanation is not None else None
        values = [{} for _ in ids]
        if suite is not None:
            values = suite.per_image(images, result.maps, targets, masks, run.method, ids)
        yield run, MethodBatch(todo, result.maps.cpu(), result, explanation, values)
