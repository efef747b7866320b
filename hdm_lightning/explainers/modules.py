"""LightningModules whose parameters are mask vectors, with the frozen classifier inside.

One module = one stage = one ``Trainer.fit``. Every (vector, image) pair of the stage is a row of
one batched forward/backward; the loss is the *sum* of the rows' losses, so each vector receives
exactly the gradient it would get alone, and Adam (elementwise) keeps the vectors independent: the
batched fit is the papers' one-vector-at-a-time algorithm, faster. The classifier must stay in ``eval()``.

The classifier is held as a plain attribute, not a registered submodule, so that Lightning's
device, precision, checkpoint and DDP machinery never touches the user's weights: checkpoints of
these modules hold the masks only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hdm_lightning.explainers.fit import EarlyStop, FrozenClassifierFit, loss_dtype
from hdm_lightning.explainers.optim import MaskOptim, build_optimizer
from hdm_lightning.masks.ops import dm_row_loss, l1_mean, mix_maps, vector_mask
from hdm_lightning.schedules.base import MaskVector, Stage

__all__ = ["MaskStageModule", "MixingModule"]


class MaskStageModule(FrozenClassifierFit):
    """Trains every vector of one :class:`Stage` for every image of a batch, together.

    With ``early_stop``, a row that has stopped keeps its values and leaves the forward/backward passes at the
    next check (every step on a CPU, where reading the flags costs nothing; every :attr:`check_every` steps on an
    accelerator, where it waits for the device): the passes it no longer needs are not spent, and ``passes``
    counts the rows actually run.

    Args:
        classifier: frozen classifier (eval mode, ``requires_grad`` off).
        selector: resolved :class:`~hdm_lightning.explainers.selectors.ActivationSelector`.
        images: the images the masks multiply, ``[B, C, H, W]``.
        stage: the plan of this fit.
        init: initial values per vector, ``[B, 1, a, b]`` each.
        guides: ``g(c^{k-1}, a, b)`` per guided vector (frozen), ``[B, 1, a, b]``.
        reference: consistency target per (vector, image), ``[n_vectors, B]``.
        upsample_mode: ``g``'s interpolation.
        max_rows: masked images per forward/backward (``None``: all rows at once).
        early_stop: optional per-row plateau stop.
    """

    def __init__(
        self,
        classifier: nn.Module,
        selector,
        images: Tensor,
        stage: Stage,
        init: list[Tensor],
        guides: list[Tensor | None],
        reference: Tensor,
        upsample_mode: str = "bilinear",
        max_rows: int | None = None,
        early_stop: EarlyStop | None = None,
        prefix: str = "stage",
        log_every: int = 50,
        channels_last: bool = False,
        optim: MaskOptim | None = None,
    ) -> None:
        super().__init__(classifier, selector, stage.steps, prefix, log_every, channels_last, optim)
        self.stage = stage
        self.vectors: list[MaskVector] = list(stage.vectors)
        self.masks = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in init])
        self.register_buffer("images", images, persistent=False)
        self.guides = guides
        dtype = loss_dtype(images.dtype)
        self.register_buffer("reference", reference.detach().to(dtype), persistent=False)
        self.upsample_mode = upsample_mode
        self.early = early_stop
        n, b = len(self.vectors), images.shape[0]
        self.register_buffer(
            "history", torch.zeros(self.steps, n, b, device=images.device, dtype=dtype), persistent=False
        )
        self.passes = 0
        self._chunks = self._plan_chunks(n, b, max_rows)
        dev = images.device
        self._wc = torch.tensor([v.consistency_weight for v in self.vectors], device=dev, dtype=dtype)
        self._wr = torch.tensor([v.reg_weight for v in self.vectors], device=dev, dtype=dtype)
        if self.early is not None:
            self._best = torch.full((n, b), float("inf"), device=dev, dtype=dtype)
            self._since = torch.zeros((n, b), dtype=torch.long, device=dev)
            self._active = torch.ones((n, b), dtype=torch.bool, device=dev)
            self._frozen = [p.detach().clone() for p in self.masks]
        self._rows: dict[tuple[int, int, int, int], Tensor | None] = {}  # rows still run per chunk (None: all)

    @staticmethod
    def _plan_chunks(n: int, b: int, max_rows: int | None) -> list[tuple[int, int, int, int]]:
        """Rectangles ``(v0, v1, b0, b1)`` of (vector, image) rows, each at most ``max_rows``."""
        if max_rows is None or n * b <= max_rows:
            return [(0, n, 0, b)]
        max_rows = max(int(max_rows), 1)
        if b <= max_rows:
            per = max_rows // b
            return [(v, min(v + per, n), 0, b) for v in range(0, n, per)]
        return [(v, v + 1, i, min(i + max_rows, b)) for v in range(n) for i in range(0, b, max_rows)]

    def configure_optimizers(self):  # noqa: D102
        groups = [{"params": [p], "lr": v.lr} for p, v in zip(self.masks, self.vectors, strict=True)]
        return build_optimizer(groups, self.optim)

    def result_masks(self) -> list[Tensor]:
        """The trained vectors: the last iterate, or the tail average (``optim.average_tail``)."""
        return self._result(list(self.masks))

    def vector_mask(self, idx: int, p: Tensor, b0: int, b1: int) -> tuple[Tensor, Tensor]:
        """Applied mask ``[nb, 1, H, W]`` and ``L_R`` term ``[nb]`` of vector ``idx`` (Eq. 6 / Eq. 8)."""
        h, w = self.images.shape[-2:]
        guide = self.guides[idx]
        guide = None if guide is None else guide[b0:b1]
        v = self.vectors[idx]
        return vector_mask(p, guide, h, w, v.reg_on, self.upsample_mode, v.l2_weight, v.tv_weight)

    def chunk_losses(self, v0: int, v1: int, b0: int, b1: int, rows: Tensor | None = None) -> Tensor:
        """Per-row losses ``[v1 - v0, b1 - b0]`` for one rectangle of rows; only ``rows`` (flat indices) if given."""
        ms, regs = zip(*(self.vector_mask(i, self.masks[i][b0:b1], b0, b1) for i in range(v0, v1)), strict=True)
        m = torch.stack(ms)  # [nv, nb, 1, H, W]
        x = (m * self.images[b0:b1].unsqueeze(0)).flatten(0, 1)
        targets = self.selector.targets[b0:b1].repeat(v1 - v0) if self.selector.fn is None else None
        shape = (v1 - v0, b1 - b0)
        ref, reg = self.reference[v0:v1, b0:b1], torch.stack(regs)
        wc, wr = self._wc[v0:v1, None].expand(shape), self._wr[v0:v1, None].expand(shape)
        if rows is not None:
            x, targets = x[rows], None if targets is None else targets[rows]
            ref, reg, wc, wr = (t.reshape(-1)[rows] for t in (ref, reg, wc, wr))
        act = self._forward_rows(x, targets).view(ref.shape)
        return dm_row_loss(act, ref, reg, wc, wr)

    def training_step(self, batch, batch_idx):  # noqa: D102
        self.in_step = True
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        step = self.steps_done
        for chunk in self._chunks:
            v0, v1, b0, b1 = chunk
            rows = self._rows.get(chunk)
            block = self.history[step, v0:v1, b0:b1]
            if rows is not None:  # stopped rows keep their last loss and cost no passes
                block.copy_(self.history[step - 1, v0:v1, b0:b1])
                if rows.numel() == 0:
                    continue
            losses = self.chunk_losses(v0, v1, b0, b1, rows)
            self.manual_backward(losses.sum())
            if rows is None:
                block.copy_(losses.detach())
            else:
                nb = b1 - b0
                block[rows // nb, rows % nb] = losses.detach()
            self.passes += losses.numel()
        total = self.history[step].sum()
        self._optimizer_step(opt)
        with torch.no_grad():
            for p in self.masks:
                p.clamp_(0.0, 1.0)  # project decision (docs/methods.md): projected onto [0, 1] after every step
            if self.early is not None:
                self._early_stop_update(step)
            self._track(list(self.masks))
        self._log_loss(total / self.history[step].numel())
        self.steps_done += 1
        self.in_step = False

    def _extra_state(self) -> dict:
        if self.early is None:
            return {}
        return {"best": self._best, "since": self._since, "active": self._active, "frozen": list(self._frozen)}

    def _load_extra_state(self, extra: dict) -> None:
        if self.early is not None:
            self._best, self._since, self._active = extra["best"], extra["since"], extra["active"]
            self._frozen = list(extra["frozen"])
            self._refresh_rows()

    def _refresh_rows(self) -> None:
        """Which rows of each chunk still run (reads ``_active``: a device sync, so only every few steps)."""
        self._rows = {}
        for chunk in self._chunks:
            v0, v1, b0, b1 = chunk
            active = self._active[v0:v1, b0:b1].flatten()
            if not bool(active.all()):
                self._rows[chunk] = active.nonzero().squeeze(1)

    def _early_stop_update(self, step: int) -> None:
        cur = self.history[step]
        improved = cur < self._best - self.early.min_delta
        self._best = torch.where(improved, cur, self._best)
        self._since = torch.where(improved, torch.zeros_like(self._since), self._since + 1)
        # Rows stopped earlier keep their values (Adam still moves them, so put them back).
        for i, p in enumerate(self.masks):
            keep = self._active[i].view(-1, 1, 1, 1)
            p.copy_(torch.where(keep, p, self._frozen[i]))
        if step + 1 >= self.early.min_steps:
            newly = self._active & (self._since >= self.early.patience)
            for i, p in enumerate(self.masks):
                self._frozen[i] = torch.where(newly[i].view(-1, 1, 1, 1), p, self._frozen[i])
            self._active = self._active & ~newly
        every = 1 if self.images.device.type == "cpu" else self.check_every
        if (step + 1) % every == 0:
            if not bool(self._active.any()):
                self.history[step + 1 :] = self.history[step]
                self._stopped_early = True
                self.trainer.should_stop = True
            else:
                self._refresh_rows()

    @torch.no_grad()
    def final_activations(self) -> Tensor:
        """``f_p`` of each vector's final applied mask times the images, ``[n_vectors, B]``."""
        out = torch.empty_like(self.reference)
        masks = self.result_masks()
        for v0, v1, b0, b1 in self._chunks:
            ms = [self.vector_mask(i, masks[i][b0:b1], b0, b1)[0] for i in range(v0, v1)]
            x = (torch.stack(ms) * self.images[b0:b1].unsqueeze(0)).flatten(0, 1)
            targets = self.selector.targets[b0:b1].repeat(v1 - v0) if self.selector.fn is None else None
            out[v0:v1, b0:b1] = self._forward_rows(x, targets).view(v1 - v0, b1 - b0)
        return out


class MixingModule(FrozenClassifierFit):
    """HDM's learned combination (HDM paper Eq. 3-5, HDM appx. Alg. 2 lines 11-32).

    Parameters ``v`` are ``[B, S]``, initialised to ones (a project decision, docs/methods.md); the mix
    ``M_h = sum_j w_j M_j / sum_j w_j`` with ``w_j = sum_{k>=j} v_k^2`` keeps ``w`` non-increasing.
    """

    def __init__(
        self,
        classifier: nn.Module,
        selector,
        images: Tensor,
        maps: Tensor,
        reference: Tensor,
        epochs: int,
        lr: float,
        lam: float,
        prefix: str = "mix",
        log_every: int = 50,
        channels_last: bool = False,
        optim: MaskOptim | None = None,
    ) -> None:
        super().__init__(classifier, selector, epochs, prefix, log_every, channels_last, optim)
        b, s = maps.shape[:2]
        self.v = nn.Parameter(torch.ones(b, s, device=images.device, dtype=maps.dtype))
        self.register_buffer("images", images, persistent=False)
        self.register_buffer("maps", maps, persistent=False)
        dtype = loss_dtype(images.dtype)
        self.register_buffer("reference", reference.detach().to(dtype), persistent=False)
        self.register_buffer(
            "history", torch.zeros(self.steps, 1, b, device=images.device, dtype=dtype), persistent=False
        )
        self.lr, self.lam = float(lr), float(lam)
        self.passes = 0

    def configure_optimizers(self):  # noqa: D102
        return build_optimizer([{"params": [self.v], "lr": self.lr}], self.optim)

    def result_v(self) -> Tensor:
        """The trained ``v``: the last iterate, or the tail average (``optim.average_tail``)."""
        return self._result([self.v])[0]

    def mixed(self, v: Tensor | None = None) -> Tensor:
        """``M_h`` for ``v`` (default: the current iterate), ``[B, 1, H, W]``."""
        return mix_maps(self.maps, self.v if v is None else v)

    def training_step(self, batch, batch_idx):  # noqa: D102
        self.in_step = True
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        mh = self.mixed()
        targets = self.selector.targets if self.selector.fn is None else None
        act = self._forward_rows(mh * self.images, targets)
        losses = (act - self.reference) ** 2 + self.lam * l1_mean(mh)[:, 0].to(act.dtype)
        self.manual_backward(losses.sum())
        self._optimizer_step(opt)
        with torch.no_grad():
            self._track([self.v])
        self.history[self.steps_done, 0] = losses.detach()
        self.passes += mh.shape[0]
        self._log_loss(losses.detach().mean())
        self.steps_done += 1
        self.in_step = False
