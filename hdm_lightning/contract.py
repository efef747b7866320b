"""The one saliency-method contract and its registry: DM, HDM, MDM and every baseline are a :class:`SaliencyMethod`.

A method is built once from its registered name and typed parameters (:func:`build_method`; the ``__init__``
signature is the schema, DM/HDM/MDM take their structured ``config``) and called with ``(images, targets)``:

>>> method = build_method("gradcam", model)  # doctest: +SKIP
>>> result = method.explain(images, targets)  # an Attribution  # doctest: +SKIP
>>> result.maps, result.forward_passes, result.backward_passes, result.seconds  # doctest: +SKIP
>>> result.explanation  # DM/HDM/MDM: stages, mixing weights, loss histories; None for baselines  # doctest: +SKIP
>>> maps = method(images, targets)  # shorthand for method.explain(images, targets).maps  # doctest: +SKIP

Maps are ``[B, 1, H, W]`` float32 in ``[0, 1]`` (per-image min-max ``N``) on the images' device. A call leaves the
model exactly as given (:func:`hdm_lightning.core.preserved`) and counts its passes in samples
(:class:`hdm_lightning.core.PassCounter`). A call keeps no state on the method: everything it produced is in the
returned :class:`Attribution`; what a run lends a call (logger, callbacks, checkpoint folder) comes in a
:class:`RunContext`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from hdm_lightning.config.methods import register_method_config
from hdm_lightning.core import PassCounter, as_targets, check_images, model_device_dtype, preserved
from hdm_lightning.masks.ops import normalize
from hdm_lightning.registry import Registry

if TYPE_CHECKING:
    from hdm_lightning.explainers.result import Explanation

__all__ = [
    "METHODS",
    "explain",
    "Attribution",
    "RunContext",
    "SaliencyMethod",
    "available_methods",
    "build_method",
    "mask_methods",
    "method_params",
    "register_method",
]

METHODS: Registry[type[SaliencyMethod]] = Registry("saliency method")
"""The one list of saliency methods (baselines and DM/HDM/MDM): the CLI, the docs and the tests read it."""


@dataclass
class RunContext:
    """What a run lends one call of a method; methods without fits (the baselines) ignore it.

    Attributes:
        logger: a Lightning logger for the fits' loss curves (e.g. W&B), or ``None``.
        callbacks: Lightning callbacks passed to every fit (e.g. a progress bar).
        work_dir: folder for mid-stage checkpoints of this batch: an interrupted call repeated with the same
            images, targets and settings continues where it stopped. ``None``: nothing is saved.
    """

    logger: Any = None
    callbacks: list = field(default_factory=list)
    work_dir: str | Path | None = None


@dataclass
class Attribution:
    """What one call of a saliency method returns (:func:`hdm_lightning.explain`, :meth:`SaliencyMethod.explain`).

    Attributes:
        maps: ``[B, 1, H, W]`` float32 in ``[0, 1]`` on the images' device.
        seconds: wall-clock time of the call.
        forward_passes: samples pushed forward through the model.
        backward_passes: samples whose outputs received a gradient.
        explanation: DM/HDM/MDM: the full :class:`~hdm_lightning.explainers.result.Explanation` (stages, mixing
            weights, loss histories, probabilities; on the model's device); ``None`` for the baselines.
        method: the registered name of the method that made it.

    The explanation's fields read through: ``out.stages``, ``out.weights``, ``out.history``, ``out.target``, ...
    are ``out.explanation.stages`` and so on (an ``AttributeError`` that says so for a baseline), and
    ``out.saliency`` is the explanation's map where there is one (DM/HDM/MDM, on the model's device), else ``maps``.
    """

    maps: Tensor
    seconds: float
    forward_passes: int
    backward_passes: int
    explanation: Explanation | None = None
    method: str = ""

    @property
    def saliency(self) -> Tensor:
        """The explanation's final map (``M_h``, ``M_b`` or ``M^h``) where there is one, else :attr:`maps`."""
        return self.maps if self.explanation is None else self.explanation.saliency

    @property
    def passes_per_image(self) -> int:
        """Forward+backward sample passes per image (the explanation's count where there is one)."""
        if self.explanation is not None:
            return self.explanation.passes_per_image
        return self.backward_passes // max(1, self.maps.shape[0])

    def __getattr__(self, name: str) -> Any:
        # Called only for names the dataclass lacks: the explanation's fields (stages, weights, history, ...).
        explanation = self.__dict__.get("explanation")
        if explanation is not None and not name.startswith("__") and hasattr(explanation, name):
            return getattr(explanation, name)
        method = self.__dict__.get("method") or "this method"
        raise AttributeError(
            f"{name!r}: an Attribution of {method!r} has no such field"
            + (
                " (only DM, HDM and MDM attach an explanation with stages, weights and loss histories; use .maps)"
                if explanation is None
                else ""
            )
        )

    def to(self, device) -> Attribution:
        """A copy with the maps and the explanation on ``device``."""
        explanation = None if self.explanation is None else self.explanation.to(device)
        return replace(self, maps=self.maps.to(device), explanation=explanation)

    def cpu(self) -> Attribution:
        """A copy on the CPU."""
        return self.to(torch.device("cpu"))


def register_method(name: str) -> Callable[[type[SaliencyMethod]], type[SaliencyMethod]]:
    """Register a :class:`SaliencyMethod` subclass under ``name`` (a duplicate name is an error).

    A class with a ``config_class`` (a structured-config dataclass, as DM/HDM/MDM have) also makes that schema the
    method's ``explainer:`` settings in run configs (:data:`hdm_lightning.config.METHOD_CONFIGS`), checked by the
    class's ``check_config(settings)``.

    Example:
        >>> @register_method("my_method")  # doctest: +SKIP
        ... class MyMethod(SaliencyMethod):
        ...     def attribute(self, images, target): ...
    """

    def deco(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
        cls.name = name
        METHODS.register(name)(cls)
        if cls.config_class is not None:
            register_method_config(name, cls.config_class, cls.check_config)
        return cls

    return deco


def available_methods() -> list[str]:
    """Names of the registered saliency methods, sorted."""
    return METHODS.names()


def mask_methods() -> list[str]:
    """Names of the registered methods configured by a structured config (DM, HDM, MDM and any alike), sorted."""
    return [n for n in METHODS.names() if METHODS.get(n).config_class is not None]


def method_params(name: str) -> dict[str, object]:
    """The parameters of method ``name`` and their defaults (``inspect.Parameter.empty`` when required)."""
    sig = inspect.signature(METHODS.get(name).__init__)
    return {k: p.default for k, p in list(sig.parameters.items())[2:] if p.kind is p.POSITIONAL_OR_KEYWORD}


def build_method(name: str, model: nn.Module, params: dict | None = None) -> SaliencyMethod:
    """Instantiate the method registered as ``name`` for ``model`` with ``params``.

    Args:
        name: a registered name (:data:`METHODS`).
        model: the classifier to explain.
        params: keyword arguments of the method's ``__init__`` (its signature is the schema).

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        ValueError: an unknown parameter (the message lists the known ones) or a bad value.
    """
    cls = METHODS.get(name)
    params = dict(params or {})
    known = list(method_params(name))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for saliency method {name!r}. Known parameters: {known}")
    return cls(model, **params)


class SaliencyMethod:
    """Base class of every saliency method: subclasses override :meth:`attribute` (and ``__init__`` for params).

    Args:
        model: the classifier, ``[B, C, H, W]`` normalised images -> ``[B, classes]`` logits. It is used in place
            (hooks where a library needs them) and left exactly as given after every call.

    Attributes:
        name: the registry name (set by :func:`register_method`).
        config_class: the structured config of methods set by one (DM/HDM/MDM), else ``None``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._counter: PassCounter | None = None

    def __call__(self, images: Tensor, target: Tensor | int | None = None) -> Tensor:
        """The maps alone: ``self.explain(images, target).maps``."""
        return self.explain(images, target).maps

    def explain(
        self, images: Tensor, target: Tensor | int | None = None, context: RunContext | None = None
    ) -> Attribution:
        """Saliency maps of ``images`` for ``target``, with their cost (an :class:`Attribution`).

        The one path of every method: checks, the model preserved, passes counted, :meth:`run`, maps normalised.

        Args:
            images: ``[B, C, H, W]`` float tensor, normalised as the model expects (0 = the dataset mean colour).
            target: LongTensor ``[B]`` of class indices (an int is used for every image); ``None`` explains the
                predicted class (one extra forward pass, counted). DM/HDM/MDM also take a callable
                ``selector(model, x) -> Tensor[B]`` giving the activation to preserve.
            context: what a run lends the call (logger, callbacks, checkpoint folder); unused by the baselines.
        """
        check_images(images)
        device, dtype = model_device_dtype(self.model)
        x = images.detach().to(device=device, dtype=dtype)
        b, _, h, w = x.shape
        start = time.perf_counter()
        with preserved(self.model), PassCounter(self.model) as counter, torch.enable_grad():
            self._counter = counter
            try:
                maps, explanation = self.run(x, target, context or RunContext())
            finally:
                self._counter = None
        seconds = time.perf_counter() - start
        if explanation is not None:
            explanation.seconds = seconds
        maps = self._finish(maps, (b, 1, h, w), images.device)
        return Attribution(maps, seconds, counter.forward, counter.backward, explanation, self.name)

    def run(self, images: Tensor, target, context: RunContext) -> tuple[Tensor, Explanation | None]:
        """The raw maps of one call (and its explanation, if any), inside :meth:`explain`'s guards.

        The base resolves the targets (the predicted class when ``None``) and calls :meth:`attribute`; DM/HDM/MDM
        override it to run their fits. ``images`` are on the model's device and dtype.
        """
        t = as_targets(target, images.shape[0], images.device)
        if t is None:
            with torch.no_grad():
                t = self.model(images).argmax(1)
        return self.attribute(images, t), None

    def _finish(self, maps: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Check a raw map's shape and values; per-image min-max normalise it, as float32 on ``device``."""
        maps = maps.detach()
        if maps.dim() == 3:
            maps = maps[:, None]
        if tuple(maps.shape) != shape:
            raise RuntimeError(f"saliency method {self.name!r} returned shape {tuple(maps.shape)}; expected {shape}")
        maps = maps.float()
        if not torch.isfinite(maps).all():
            raise RuntimeError(
                f"saliency method {self.name!r} produced NaN or inf values (check the model's outputs for these "
                "images and the method's params)"
            )
        return normalize(maps).to(device)

    def attribute(self, images: Tensor, target: Tensor) -> Tensor:
        """The raw map ``[B, 1, H, W]`` (or ``[B, H, W]``); :meth:`explain` normalises it per image.

        Runs with the model in eval mode, parameters frozen, gradients enabled and passes counted. ``images`` are on
        the model's device and dtype; ``target`` is a LongTensor ``[B]`` on the same device.
        """
        raise NotImplementedError

    @property
    def counter(self) -> PassCounter:
        """The pass counter of the call in progress (for :meth:`PassCounter.watch` / :meth:`PassCounter.add`)."""
        if self._counter is None:
            raise RuntimeError("the pass counter exists only during a call of the method")
        return self._counter

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k, '?')!r}" for k in method_params(self.name)) if self.name else ""
        return f"{type(self).__name__}({params})"


def explain(
    model: nn.Module,
    images: Tensor,
    method: str = "hdm",
    target: Tensor | int | list | Callable | None = None,
    config=None,
    logger=None,
    callbacks=None,
    work_dir: str | Path | None = None,
) -> Attribution:
    """Explain ``model`` on ``images`` with any registered method: ``hdm``, ``dm``, ``mdm``, ``gradcam``, ``rise``, ...

    The same as ``build_method(method, model, params).explain(images, target, context)``: one path for every method.

    Args:
        model: any classifier ``nn.Module`` (kept frozen; its flags are restored afterwards).
        images: ``[B, C, H, W]`` float tensor, normalised as ``model`` expects.
        method: a registered method (:func:`~hdm_lightning.contract.available_methods`).
        target: ``None`` (the predicted class), a class index or one per image; DM/HDM/MDM also take a callable
            ``selector(model, x) -> Tensor[N]`` giving the activation to preserve.
        config: the method's settings. DM/HDM/MDM: overrides of their structured config (a dict, DictConfig,
            dataclass or a YAML path such as ``configs/methods/hdm_fast.yaml``). Other methods: a dict of their
            parameters (e.g. ``{"n_masks": 2000}`` for ``rise``).
        logger: optional Lightning logger (e.g. ``WandbLogger``) for DM/HDM/MDM's per-stage loss curves.
        callbacks: optional Lightning callbacks passed to every fit.
        work_dir: optional folder for DM/HDM/MDM's mid-stage checkpoints: an interrupted call repeated with the
            same arguments continues where it stopped (same maps as an uninterrupted call).

    Returns:
        :class:`~hdm_lightning.contract.Attribution`: ``maps`` (``[B, 1, H, W]`` in ``[0, 1]`` on the images'
        device), the cost, and for DM/HDM/MDM the full explanation (``out.stages``, ``out.weights``,
        ``out.history``, ``out.saliency`` on the model's device).

    Raises:
        KeyError: ``method`` is not registered (the message lists the registered ones).
        ValueError: a bad setting or an unknown parameter (the message lists the known ones).
    """
    if METHODS.get(method).config_class is not None:  # DM, HDM, MDM and alike: a structured config
        params = {"config": config}
    elif config is None or isinstance(config, dict):
        params = dict(config or {})
    else:
        raise ValueError(
            f"config for {method!r} is the dict of its parameters ({list(method_params(method))}); a YAML or "
            "structured config sets DM, HDM or MDM only"
        )
    context = RunContext(logger=logger, callbacks=list(callbacks or []), work_dir=work_dir)
    return build_method(method, model, params).explain(images, target, context)
