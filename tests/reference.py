"""A deliberately simple, one-vector-at-a-time, one-image-at-a-time reference of DM, HDM and MDM.

Written straight from the papers' algorithms (the HDM paper's appendix, arXiv 2301.04970, Algorithms
1-2; the MDM paper, arXiv 2207.08046, Algorithm 1) with batch size 1 and plain torch loops. It shares no
code with ``hdm_lightning`` so that the batched engine can be checked against it. Slow by design; used by
the tests and by ``python -m benchmarks.benchmark`` (part (a)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def g(v, h, w, mode="bilinear"):
    """Upsample ``[1, 1, a, b]`` to ``[1, 1, h, w]``."""
    if tuple(v.shape[-2:]) == (h, w):
        return v
    if mode == "bilinear":
        return F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
    return F.interpolate(v, size=(h, w), mode="nearest")


def norm(x):
    """Min-max normalisation of one map; constant maps become zeros."""
    lo, hi = x.min(), x.max()
    if hi - lo <= 0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def n_levels(h, w, a, b, t):
    """K = min(floor(log_t(H / a)), floor(log_t(W / b))) by repeated multiplication."""
    k = 0
    while a * t ** (k + 1) <= h and b * t ** (k + 1) <= w:
        k += 1
    return k


def activation(model, x, target):
    """f_p(x) for one image: the target's logit, or a callable selector."""
    if callable(target):
        return target(model, x)[0]
    return model(x)[0, target]


def train_vector(
    model,
    x,
    target,
    ref,
    init,
    steps,
    lr,
    reg_weight,
    consistency_weight=1.0,
    reg_on="upsampled",
    guide=None,
    mode="bilinear",
    early=None,
    optim=None,
):
    """Train one vector on one image with Adam, clamping to [0, 1] after every step.

    ``optim=None``: the papers' dynamics (``torch.optim.Adam``, constant lr, last iterate); a dict
    (``eps_relative``, ``schedule``, ``warmup``, ``average_tail``): the stable dynamics, via :class:`Stepper`.
    """
    h, w = x.shape[-2:]
    p = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr) if optim is None else Stepper(p, lr, steps, optim)
    best, since = float("inf"), 0
    for step in range(steps):
        opt.zero_grad()
        gated = p if guide is None else p * guide
        m = g(gated, h, w, mode)
        j = (activation(model, m * x, target) - ref) ** 2
        reg = p.abs().mean() if reg_on == "vector" else g(p, h, w, mode).abs().mean()
        loss = consistency_weight * j + reg_weight * reg
        loss.backward()
        opt.step()
        with torch.no_grad():
            p.clamp_(0.0, 1.0)
            if optim is not None:
                opt.track(step)
        if early is not None:
            value = loss.item()
            if value < best - early["min_delta"]:
                best, since = value, 0
            else:
                since += 1
            if step + 1 >= early["min_steps"] and since >= early["patience"]:
                break
    return p.detach() if optim is None else opt.result()


class Stepper:
    """Adam written out for one tensor, with the stable dynamics' options (independent of the package).

    lr at step t (0-based, T steps, W = round(warmup T) warm-up steps): lr (t+1)/W while t < W, then
    lr (1 + cos(pi (t - W) / (T - W))) / 2 for ``schedule: cosine`` (lr for ``constant``). Update:
    p -= lr_t m_hat / (sqrt(v_hat) + eps + eps_relative sqrt(mean(v_hat))). The result is the mean of the
    iterates after the last round(average_tail T) steps (the last iterate when that is 0).
    """

    def __init__(self, p, lr, steps, optim):
        self.p, self.lr, self.steps = p, lr, steps
        self.b1, self.b2 = optim.get("betas", (0.9, 0.999))
        self.eps = optim.get("eps", 1e-8)
        self.rel = optim.get("eps_relative")
        self.schedule = optim.get("schedule", "constant")
        self.warm = round(optim.get("warmup", 0.0) * steps)
        self.tail_from = steps - round(optim.get("average_tail", 0.0) * steps)
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)
        self.t = 0
        self.iterates = []

    def zero_grad(self):
        self.p.grad = None

    def rate(self, t):
        if t < self.warm:
            return self.lr * (t + 1) / self.warm
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * (t - self.warm) / max(self.steps - self.warm, 1)))

    @torch.no_grad()
    def step(self):
        grad = self.p.grad
        lr = self.rate(self.t)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        denom = v_hat.sqrt() + self.eps
        if self.rel is not None:
            denom = denom + self.rel * v_hat.mean().sqrt()
        self.p -= lr * m_hat / denom

    def track(self, step):
        if step >= self.tail_from:
            self.iterates.append(self.p.detach().clone())

    def result(self):
        if not self.iterates:
            return self.p.detach()
        return torch.stack(self.iterates).mean(0)


def _targets(model, images, target):
    with torch.no_grad():
        if callable(target):
            return [target] * images.shape[0]
        if target is None:
            return model(images).argmax(1).tolist()
        if isinstance(target, int):
            return [target] * images.shape[0]
        return list(target)


def _threshold(m, kind, value):
    if kind == "value":
        return torch.tensor(float(value), dtype=m.dtype)
    return torch.quantile(m.flatten().float(), float(value)).to(m.dtype)


def dm_one_image(
    model,
    x,
    target,
    sizes,
    factors,
    epochs,
    lr,
    eta,
    tau=0.5,
    mode="bilinear",
    threshold=("quantile", 0.5),
    aux_reference="original",
    reference_image=None,
    early=None,
    aux_epochs=None,
    optim=None,
):
    """Algorithm 1 for one image ``x [1, C, H, W]``; the consistency target is f_p(x)."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        ref = activation(model, x if reference_image is None else reference_image, target)
    vectors = {}
    mc = torch.zeros(1, 1, h, w, dtype=x.dtype)
    aux_epochs = epochs if aux_epochs is None else aux_epochs
    for i, size in enumerate(sizes, start=1):
        a, b = (size, size) if isinstance(size, int) else tuple(size)
        d = train_vector(
            model,
            x,
            target,
            ref,
            torch.full((1, 1, a, b), tau, dtype=x.dtype),
            epochs,
            lr,
            eta,
            mode=mode,
            early=early,
            optim=optim,
        )
        vectors[f"d{i}"] = d
        for t in factors:
            prev = d
            with torch.no_grad():
                prev_act = activation(model, g(d, h, w, mode) * x, target)
            mc = mc + g(d, h, w, mode)  # c_j^0(i) = d_i, once per factor (Eq. 9)
            for k in range(1, n_levels(h, w, a, b, t) + 1):
                ak, bk = t**k * a, t**k * b
                init = g(d, ak, bk, mode).clamp(0, 1)  # Eq. 7
                guide = g(prev, ak, bk, mode)
                r = prev_act if aux_reference == "previous" else ref
                c = train_vector(
                    model, x, target, r, init, aux_epochs, lr, eta, guide=guide, mode=mode, early=early, optim=optim
                )
                with torch.no_grad():
                    prev_act = activation(model, g(c * guide, h, w, mode) * x, target)
                vectors[f"d{i}/t{t}/k{k}"] = c
                mc = mc + g(c, h, w, mode)
                prev = c
        if not factors:
            mc = mc + g(d, h, w, mode)
    gamma = _threshold(mc, *threshold)
    mb = norm((mc - gamma) * (mc >= gamma))
    return {"vectors": vectors, "saliency": mb, "combined": mc, "binary": mc >= gamma}


def _stack(outs):
    names = outs[0]["vectors"].keys()
    return {
        "vectors": {n: torch.cat([o["vectors"][n] for o in outs]) for n in names},
        **{k: torch.cat([o[k] for o in outs]) for k in ("saliency", "combined", "binary")},
    }


def reference_dm(
    model,
    images,
    sizes,
    factors,
    epochs,
    lr,
    eta,
    tau=0.5,
    upsample="bilinear",
    threshold=("quantile", 0.5),
    aux_reference="original",
    target=None,
    early=None,
    aux_epochs=None,
    optim=None,
):
    """DM for every image, one image and one vector at a time."""
    model.eval()
    targets = _targets(model, images, target)
    outs = [
        dm_one_image(
            model,
            images[b : b + 1],
            targets[b],
            sizes,
            factors,
            epochs,
            lr,
            eta,
            tau,
            upsample,
            threshold,
            aux_reference,
            early=early,
            aux_epochs=aux_epochs,
            optim=optim,
        )
        for b in range(images.shape[0])
    ]
    return _stack(outs)


def reference_mdm(
    model,
    images,
    sizes,
    steps,
    lr,
    consistency_weight,
    reg_weight,
    tau=0.5,
    upsample="bilinear",
    threshold=("value", 5.0),
    target=None,
    early=None,
    optim=None,
):
    """MDM (the MDM paper, arXiv 2207.08046, Algorithm 1), one image and one vector at a time."""
    model.eval()
    targets = _targets(model, images, target)
    outs = []
    for b in range(images.shape[0]):
        x = images[b : b + 1]
        h, w = x.shape[-2:]
        with torch.no_grad():
            ref = activation(model, x, targets[b])
        vectors, total = {}, torch.zeros(1, 1, h, w, dtype=x.dtype)
        for i, size in enumerate(sizes, start=1):
            a, bb = (size, size) if isinstance(size, int) else tuple(size)
            d = train_vector(
                model,
                x,
                targets[b],
                ref,
                torch.full((1, 1, a, bb), tau, dtype=x.dtype),
                steps,
                lr,
                reg_weight,
                consistency_weight,
                reg_on="vector",
                mode=upsample,
                early=early,
                optim=optim,
            )
            vectors[f"d{i}"] = d
            total = total + g(d, h, w, upsample)
        gamma = _threshold(total, *threshold)
        outs.append(
            {
                "vectors": vectors,
                "saliency": norm((total >= gamma) * total),
                "combined": total,
                "binary": total >= gamma,
            }
        )
    return _stack(outs)


def reference_hdm(model, images, stages, dm_kwargs, mix_epochs, mix_lr, lam, target=None, optim=None):
    """HDM (the HDM paper's appendix, arXiv 2301.04970, Algorithm 2), one image at a time.

    Each DM run goes through :func:`dm_one_image`.
    """
    model.eval()
    targets = _targets(model, images, target)
    out = {"saliency": [], "maps": [], "masked": [], "weights": [], "v": []}
    for b in range(images.shape[0]):
        x0 = images[b : b + 1]
        maps, masked, x = [], [], x0
        for _ in range(stages):
            maps.append(dm_one_image(model, x, targets[b], **dm_kwargs)["saliency"])
            x = (1 - norm(sum(maps))) * x0  # Eq. 2
            masked.append(x)
        with torch.no_grad():
            ref = activation(model, x0, targets[b])
        v = torch.ones(stages, dtype=x0.dtype, requires_grad=True)
        opt = torch.optim.Adam([v], lr=mix_lr) if optim is None else Stepper(v, mix_lr, mix_epochs, optim)
        stacked = torch.cat(maps)  # [S, 1, H, W]

        def mix(v, stacked=stacked):
            w = torch.stack([(v[j:] ** 2).sum() for j in range(stages)])  # w_j = sum_{k>=j} v_k^2
            return (w[:, None, None, None] * stacked).sum(0, keepdim=True) / w.sum(), w

        for step in range(mix_epochs):
            opt.zero_grad()
            mh, _ = mix(v)
            loss = (activation(model, mh * x0, targets[b]) - ref) ** 2 + lam * mh.abs().mean()
            loss.backward()
            opt.step()
            if optim is not None:
                opt.track(step)
        if optim is not None:
            v = opt.result()
        with torch.no_grad():
            mh, w = mix(v)
        out["saliency"].append(mh)
        out["maps"].append(torch.stack(maps, 1))
        out["masked"].append(torch.stack(masked, 1))
        out["weights"].append((w / w.sum())[None])
        out["v"].append(v.detach()[None])
    return {k: torch.cat(val) for k, val in out.items()}
