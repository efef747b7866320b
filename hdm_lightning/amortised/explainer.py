"""A trained amortised explainer: the predictor, the DM settings it was trained for, and its file format.

``train_explainer.py`` writes ``explainer.pt``: plain tensors, numbers, strings and dicts only, read with
``torch.load(..., weights_only=True)`` (never pickled code). It records what the predicted vectors mean: the ``dm``
schedule's parameters (sizes, factors, ``eta``), ``g``'s interpolation, the threshold that turns ``M_c`` into
``M_b``, the classifier layer it reads and the classifier it was trained against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from hdm_lightning.amortised.predictor import FeatureTap, MaskPredictor
from hdm_lightning.explainers.engine import ScheduleOutcome, combine
from hdm_lightning.explainers.initializers import register_initializer
from hdm_lightning.io import atomic_torch_save
from hdm_lightning.masks.ops import Threshold, dm_combine_threshold
from hdm_lightning.schedules.base import MaskVector, Stage, build_schedule

__all__ = [
    "EXPLAINER_FORMAT",
    "AmortisedExplainer",
    "benchmark_vectors",
    "initializer",
    "load_explainer",
    "predicted_vectors",
]

EXPLAINER_FORMAT = "hdm_lightning.explainer"
EXPLAINER_VERSION = 2  # 2: skip layers, auxiliary levels (files of version 1 read unchanged)


def _dm_plan(schedule: dict, height: int, width: int) -> list[Stage]:
    """The stages of a ``dm`` schedule ``{"name": "dm", "params": {...}}`` for ``height x width`` images."""
    if schedule.get("name") != "dm":
        raise ValueError(
            f"the amortised explainer predicts the benchmark vectors of the 'dm' schedule; got schedule "
            f"{schedule.get('name')!r}: use schedule.name=dm"
        )
    return list(build_schedule("dm", dict(schedule.get("params") or {})).plan(height, width))


def benchmark_vectors(schedule: dict) -> tuple[MaskVector, ...]:
    """The benchmark vectors ``d_i`` of a ``dm`` schedule (sizes, ``eta``)."""
    return _dm_plan(schedule, 10**6, 10**6)[0].vectors  # stage 0 needs no image size


def predicted_vectors(schedule: dict, image_size: tuple[int, int] | None) -> list[Stage]:
    """The stages whose vectors a predictor outputs.

    DM's benchmark vectors, and with ``image_size`` ``(H, W)`` also the auxiliary levels ``c_j^k(i)`` DM fits on
    images of that size (their number and sizes depend on it).
    """
    if image_size is None:
        return [Stage("benchmark", benchmark_vectors(schedule), 1)]
    return _dm_plan(schedule, *image_size)


def _channels(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else str(counts)


@dataclass
class AmortisedExplainer:
    """A mask predictor with the DM settings it was trained for.

    Attributes:
        predictor: the network (:class:`MaskPredictor`).
        layer: the classifier layer it reads (``None``: the architecture's Grad-CAM layer).
        skips: earlier classifier layers it also reads (spatial detail; may be empty).
        image_size: ``(H, W)`` when it also predicts DM's auxiliary levels (their sizes are those of this image
            size); ``None``: the benchmark vectors only.
        schedule: ``{"name": "dm", "params": {...}}``, the schedule whose benchmark vectors it predicts.
        upsample: ``g``'s interpolation.
        threshold: ``gamma`` of ``M_b`` (DM's).
        info: what the training run recorded (classifier, epochs, validation loss, ...).
    """

    predictor: MaskPredictor
    layer: str | None
    schedule: dict
    upsample: str = "bilinear"
    threshold: Threshold = field(default_factory=Threshold)
    info: dict = field(default_factory=dict)
    skips: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None

    @property
    def stages(self) -> list[Stage]:
        """DM's stages whose vectors it predicts (the benchmark; with ``image_size`` the auxiliary levels too)."""
        return predicted_vectors(self.schedule, self.image_size)

    @property
    def vectors(self) -> tuple[MaskVector, ...]:
        """Every predicted vector (names, sizes, guides, loss weights, combine weights), in the predictor's order."""
        return tuple(v for stage in self.stages for v in stage.vectors)

    @property
    def benchmark(self) -> tuple[MaskVector, ...]:
        """The benchmark vectors ``d_i`` (what ``init: amortised`` starts DM's fits from)."""
        return benchmark_vectors(self.schedule)

    def tap(self, model: nn.Module) -> FeatureTap:
        """The feature tap on ``model``, checked against what the predictor expects (channels, classes)."""
        return FeatureTap(model, self.layer, self.skips)

    def check_features(self, feats: list[Tensor], logits: Tensor) -> None:
        """A clear error when the classifier is not the kind the predictor was trained for."""
        p = self.predictor
        want_c = [p.reduce.in_channels, *(conv.in_channels for conv in p.skips)]
        want_k, got_c = p.classes.num_embeddings, [int(f.shape[1]) for f in feats]
        if got_c != want_c or logits.shape[1] != want_k:
            raise ValueError(
                f"the amortised explainer was trained for a classifier with {_channels(want_c)} feature channels at "
                f"its layer{'s' if len(want_c) > 1 else ''} and {want_k} classes; this one has {_channels(got_c)} "
                f"and {logits.shape[1]} "
                f"({self.info.get('classifier', 'see the training run')}): train one for it with train_explainer.py"
            )

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
        """One forward pass of ``model``: ``({name: d_i [B, 1, a, b]}, targets [B])`` (``None``: predicted class)."""
        raw, targets, _ = self.predict_raw(model, images, targets)
        return {n: self.predictor.activate(z).to(images.dtype) for n, z in raw.items()}, targets

    @torch.no_grad()
    def predict_raw(
        self, model: nn.Module, images: Tensor, targets: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One forward pass: ``({name: head output before activation}, targets [B], f_c(images) [B])``."""
        if self.image_size is not None and tuple(images.shape[-2:]) != tuple(self.image_size):
            raise ValueError(
                f"this amortised explainer predicts DM's auxiliary levels for {self.image_size[0]}x"
                f"{self.image_size[1]} images, got {images.shape[-2]}x{images.shape[-1]}: use the preprocessing it "
                "was trained with, or train one for this size"
            )
        feats, logits = self.tap(model).features(images)
        self.check_features(feats, logits)
        if targets is None:
            targets = logits.argmax(1)
        self.predictor.to(device=logits.device)
        out = self.predictor.logits([f.float() for f in feats], targets)
        names = [v.name for v in self.vectors]
        reference = logits.gather(1, targets[:, None].to(logits.device))[:, 0]
        return dict(zip(names, out, strict=True)), targets, reference

    def saliency(self, vectors: dict[str, Tensor], height: int, width: int) -> tuple[Tensor, Tensor]:
        """``(M_b, M_c)`` built from the predicted vectors exactly as DM builds them (Eq. 9-10)."""
        outcome = ScheduleOutcome(vectors=vectors, history={}, names={}, plan=self.stages, passes=0)
        mc = combine(outcome, height, width, self.upsample)
        mb, _, _ = dm_combine_threshold(mc, self.threshold)
        return mb, mc

    def save(self, path: str | Path) -> Path:
        """Write ``explainer.pt`` atomically (tensors and plain data only)."""
        p = self.predictor
        payload = {
            "format": EXPLAINER_FORMAT,
            "version": EXPLAINER_VERSION,
            "state_dict": {k: v.detach().cpu() for k, v in p.state_dict().items()},
            "predictor": {
                "in_channels": int(p.reduce.in_channels),
                "num_classes": int(p.classes.num_embeddings),
                "sizes": [list(s) for s in p.sizes],
                "hidden": int(p.reduce.out_channels),
                "output": p.output,
                "skip_channels": [int(conv.in_channels) for conv in p.skips],
            },
            "layer": self.layer,
            "skips": list(self.skips),
            "image_size": None if self.image_size is None else [int(n) for n in self.image_size],
            "schedule": {"name": self.schedule["name"], "params": dict(self.schedule.get("params") or {})},
            "upsample": self.upsample,
            "threshold": {"kind": self.threshold.kind, "value": float(self.threshold.value)},
            "info": dict(self.info),
        }
        return atomic_torch_save(payload, Path(path))


def load_explainer(path: str | Path) -> AmortisedExplainer:
    """Read an ``explainer.pt`` written by ``train_explainer.py`` (``weights_only=True``).

    Raises:
        ValueError: a missing file, a file of another kind, or one that does not fit its own description.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"amortised explainer file {str(path)!r} does not exist: train one with "
            "`python train_explainer.py --config configs/explainer/synthetic.yaml` and pass its explainer.pt"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {str(path)!r} as an amortised explainer (tensors-only file): {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPLAINER_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an amortised explainer file (format {EXPLAINER_FORMAT!r}); train_explainer.py "
            "writes one as <output.dir>/explainer.pt"
        )
    if int(raw.get("version", 0)) > EXPLAINER_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer hdm_lightning (version {raw['version']}): upgrade")
    spec = raw["predictor"]
    predictor = MaskPredictor(
        int(spec["in_channels"]),
        int(spec["num_classes"]),
        [tuple(s) for s in spec["sizes"]],
        int(spec["hidden"]),
        output=str(spec.get("output", "clamp")),
        skip_channels=[int(c) for c in spec.get("skip_channels", [])],
    )
    try:
        predictor.load_state_dict(raw["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{str(path)!r}: the weights do not fit the predictor it describes: {e}") from None
    predictor.eval()
    for q in predictor.parameters():
        q.requires_grad_(False)
    t = raw["threshold"]
    explainer = AmortisedExplainer(
        predictor=predictor,
        layer=raw.get("layer"),
        schedule=raw["schedule"],
        upsample=raw.get("upsample", "bilinear"),
        threshold=Threshold(t["kind"], float(t["value"])),
        info=dict(raw.get("info") or {}),
        skips=[str(k) for k in raw.get("skips", [])],
        image_size=None if raw.get("image_size") is None else tuple(int(n) for n in raw["image_size"]),
    )
    sizes = [tuple(v.size) for v in explainer.vectors]
    if sizes != predictor.sizes:
        raise ValueError(f"{str(path)!r}: the predictor's sizes {predictor.sizes} are not its schedule's {sizes}")
    return explainer


def initializer(cfg, schedule, method: str) -> AmortisedExplainer:
    """The explainer of a ``dm``/``hdm`` config with ``init: amortised``, checked against the method's schedule.

    Raises:
        ValueError: the file cannot be read, or its vectors are not this schedule's benchmark vectors.
    """
    explainer = load_explainer(cfg.init_checkpoint)
    name = OmegaConf.to_container(cfg.schedule).get("name")
    theirs = [tuple(v.size) for v in explainer.benchmark]
    sizes = [tuple(v.size) for v in schedule.plan(10**6, 10**6)[0].vectors]
    if name != "dm" or sizes != theirs:
        raise ValueError(
            f"init: amortised: {cfg.init_checkpoint} predicts the dm benchmark vectors of sizes {theirs}, but this "
            f"{method} schedule is {name!r} with benchmark sizes {sizes}: use schedule.name=dm with "
            f"params.sizes={[list(s) for s in theirs]}, or train an explainer for these sizes"
        )
    return explainer


register_initializer("amortised", initializer)
