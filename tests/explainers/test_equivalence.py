"""The batched engine equals the one-vector-at-a-time reference (tests/reference.py)."""

import warnings

import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.config import MaskOptimConfig, MDMConfig
from tests.reference import reference_dm, reference_hdm, reference_mdm
from tests.toy_models import tiny_cnn

DM = {"sizes": [3, 4], "factors": [2, 3], "epochs": 12, "lr": 0.05, "eta": 0.02}
TOL = 1e-10  # float64 throughout: only summation-order round-off may differ
_STABLE = MaskOptimConfig()
# The reference's own description of the stable dynamics' settings, and the papers' (None: torch Adam).
REF_OPTIM = {
    "paper": None,
    "stable": {
        "eps": _STABLE.eps,
        "eps_relative": _STABLE.eps_relative,
        "schedule": _STABLE.schedule,
        "warmup": _STABLE.warmup,
        "average_tail": _STABLE.average_tail,
    },
}
DYNAMICS = pytest.mark.parametrize("dynamics", ["paper", "stable"])
# The stable dynamics' steps shrink with the relative eps (and decay to 0): an lr multiplier of half the relative
# eps keeps these short runs non-vacuous.
LR = {"paper": 1.0, "stable": _STABLE.eps_relative / 2}
# MDM's stable dynamics keep a smaller relative eps (see MDMConfig).
_MDM_REL = MDMConfig().optim.eps_relative
MDM_OPTIM = {"paper": None, "stable": {**REF_OPTIM["stable"], "eps_relative": _MDM_REL}}
MDM_LR = {"paper": 1.0, "stable": _MDM_REL / 2}


def _cfg(dynamics: str, **cfg) -> dict:
    return {**cfg, "optim": {"dynamics": dynamics}}


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"aux_reference": "previous"},
        {"upsample": "nearest", "threshold": {"kind": "quantile", "value": 0.7}},
        {"engine": {"max_rows": 3}},  # chunked rows, gradients accumulated
    ],
    ids=["default", "aux-previous", "nearest-q70", "chunked"],
)
@DYNAMICS
def test_dm_batched_equals_reference(images, extra, dynamics):
    model = tiny_cnn()
    dm = {**DM, "lr": DM["lr"] * LR[dynamics]}
    ref = reference_dm(
        model,
        images,
        **dm,
        upsample=extra.get("upsample", "bilinear"),
        threshold=tuple(extra.get("threshold", {"kind": "quantile", "value": 0.5}).values()),
        aux_reference=extra.get("aux_reference", "original"),
        optim=REF_OPTIM[dynamics],
    )
    out = hl.explain(model, images, "dm", config=_cfg(dynamics, schedule={"params": dm}, **extra))
    vectors = out.stages[0].vectors
    assert _max_diff(vectors, ref["vectors"]) < TOL
    assert torch.allclose(out.saliency, ref["saliency"], atol=TOL, rtol=0)
    assert torch.equal(out.binary, ref["binary"])
    # the test is not vacuous: trained vectors vary in space and differ from the initial 0.5
    assert all(v.std() > 0.05 for v in vectors.values())


@DYNAMICS
def test_mdm_batched_equals_reference(images, dynamics):
    model = tiny_cnn()
    params = {"sizes": [3, 5, [4, 6]], "steps": 15, "lr": 0.05 * MDM_LR[dynamics], "consistency_weight": 1.0}
    params["reg_weight"] = 0.05
    ref = reference_mdm(model, images, **params, threshold=("value", 1.0), optim=MDM_OPTIM[dynamics])
    cfg = _cfg(dynamics, schedule={"params": params}, threshold={"kind": "value", "value": 1.0})
    out = hl.explain(model, images, "mdm", config=cfg)
    assert _max_diff(out.stages[0].vectors, ref["vectors"]) < TOL
    assert torch.allclose(out.saliency, ref["saliency"], atol=TOL, rtol=0)
    assert all(v.std() > 0.05 for v in out.stages[0].vectors.values())


@DYNAMICS
def test_hdm_batched_equals_reference(images, dynamics):
    model = tiny_cnn()
    dm = {"sizes": [3, 4], "factors": [2], "epochs": 10, "lr": 0.05 * LR[dynamics], "eta": 0.02}
    opt = REF_OPTIM[dynamics]
    ref = reference_hdm(
        model, images, stages=2, dm_kwargs={**dm, "optim": opt}, mix_epochs=15, mix_lr=0.1, lam=1e-4, optim=opt
    )
    cfg = _cfg(dynamics, schedule={"params": dm}, stages=2, mixing={"epochs": 15, "lr": 0.1, "lam": 1e-4})
    out = hl.explain(model, images, "hdm", config=cfg)
    assert torch.allclose(torch.stack([s.saliency for s in out.stages], 1), ref["maps"], atol=TOL, rtol=0)
    assert torch.allclose(torch.stack([s.masked for s in out.stages], 1), ref["masked"], atol=TOL, rtol=0)
    assert torch.allclose(out.mixing_v, ref["v"], atol=TOL, rtol=0)
    assert torch.allclose(out.weights, ref["weights"], atol=TOL, rtol=0)
    assert torch.allclose(out.saliency, ref["saliency"], atol=TOL, rtol=0)
    assert (out.mixing_v - 1).abs().max() > 1e-3  # the mixing really trained


def test_early_stop_rows_stop_independently(images):
    model = tiny_cnn()
    early = {"min_steps": 5, "patience": 3, "min_delta": 1e-3}
    params = {"sizes": [3, 4], "factors": [2], "epochs": 40, "lr": 0.05, "eta": 0.02}
    ref = reference_dm(model, images, **params, early=early)
    cfg = _cfg("paper", schedule={"params": params}, early_stop={"enabled": True, **early})
    out = hl.explain(model, images, "dm", config=cfg)
    assert _max_diff(out.stages[0].vectors, ref["vectors"]) < TOL
    assert torch.allclose(out.saliency, ref["saliency"], atol=TOL, rtol=0)
    full = reference_dm(model, images, **params)  # without early stop the vectors end elsewhere
    assert _max_diff(full["vectors"], ref["vectors"]) > 1e-3
    # Stopped rows leave the passes at the next check: fewer passes, and the count is honest.
    no_stop = hl.explain(model, images, "dm", config=_cfg("paper", schedule={"params": params}))
    assert out.passes_per_image < no_stop.passes_per_image
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "counted N backward samples but ... reports M"
        attribution = hl.build_method("dm", model, {"config": cfg}).explain(images)
    assert attribution.backward_passes // images.shape[0] == attribution.explanation.passes_per_image


def test_float32_within_tolerance():
    model = tiny_cnn(dtype=torch.float32)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 24, 24)
    params = {"sizes": [3, 4], "factors": [2], "epochs": 8, "lr": 0.05, "eta": 0.02}
    ref = reference_dm(model, x, **params)
    out = hl.explain(model, x, "dm", config=_cfg("paper", schedule={"params": params}))
    assert _max_diff(out.stages[0].vectors, ref["vectors"]) < 1e-3
