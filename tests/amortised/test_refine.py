"""Refining amortised masks: semi-amortised steps on the head outputs; DM/HDM started at the prediction."""

from __future__ import annotations

import pytest
import torch

from hdm_lightning import build_method
from hdm_lightning.amortised import AmortisedExplainer, MaskPredictor, load_explainer
from hdm_lightning.amortised.explainer import predicted_vectors
from hdm_lightning.amortised.refine import refine
from hdm_lightning.models import build_backbone

SCHEDULE = {"name": "dm", "params": {"sizes": [3, 4, 5], "factors": [2], "epochs": 3, "lr": 0.05, "eta": 1.0}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small CNN, an (untrained, varied) predictor of DM's vectors and levels at 32 px, saved as explainer.pt."""
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 3).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    specs = [v for stage in predicted_vectors(SCHEDULE, (32, 32)) for v in stage.vectors]
    p = MaskPredictor(128, 3, [v.size for v in specs], hidden=8)
    with torch.no_grad():
        for head in p.heads:
            head.weight.normal_(0.0, 3.0)
            head.bias.fill_(-3.0)  # small values, as a trained predictor gives off the object
    path = AmortisedExplainer(p.eval(), None, SCHEDULE, image_size=(32, 32)).save(
        tmp_path_factory.mktemp("refine") / "explainer.pt"
    )
    return model, load_explainer(path), path, torch.randn(3, 3, 32, 32)


def test_refinement_lowers_dm_loss_per_image_as_if_alone(setup):
    """Each image's DM loss falls, a batch refines each image as it would alone, and no value is set to exactly 0."""
    model, explainer, _, x = setup
    targets = torch.tensor([0, 1, 2])
    start, _ = explainer.predict(model, x, targets)
    same, _, history = refine(explainer, model, x, targets, 0, 1.0)
    for name, d in start.items():
        torch.testing.assert_close(same[name], d, rtol=0, atol=0)  # 0 steps: the prediction
    assert history.shape == (1, 3)
    vectors, _, history = refine(explainer, model, x, targets, 6, 0.5)
    assert history.shape == (7, 3) and bool((history[-1] < history[0]).all())
    alone, _, _ = refine(explainer, model, x[1:2], targets[1:2], 6, 0.5)
    for name, d in alone.items():
        torch.testing.assert_close(vectors[name][1:2], d, rtol=1e-4, atol=1e-5)
    assert min(float(d.min()) for d in vectors.values()) > 0  # the sigmoid's values move, none is clamped to 0
    # DM's projected steps from the same start zero the small values (why refinement works on the head outputs)
    config = {
        "schedule": {"name": "dm", "params": {**SCHEDULE["params"], "epochs": 1, "lr": 0.05}},
        "init": "amortised",
        "init_checkpoint": str(setup[2]),
    }
    dm = build_method("dm", model, {"config": config}).explain(x, targets).explanation
    assert min(float(d.min()) for d in dm.stages[0].vectors.values()) == 0.0


def test_amortised_method_refines_and_counts_its_passes(setup):
    """``refine_steps: k`` gives the refined vectors' DM map; each step is one forward/backward pass per vector."""
    model, explainer, path, x = setup
    targets = torch.tensor([2, 0, 1])
    method = build_method("amortised", model, {"checkpoint": str(path), "refine_steps": 4, "refine_lr": 0.5})
    got = method.explain(x, targets)
    vectors, _, _ = refine(explainer, model, x, targets, 4, 0.5)
    torch.testing.assert_close(got.maps, explainer.saliency(vectors, 32, 32)[0], rtol=0, atol=1e-6)
    n = len(explainer.vectors)
    assert got.backward_passes == 4 * n * 3
    plain = build_method("amortised", model, {"checkpoint": str(path)}).explain(x, targets)
    assert plain.backward_passes == 0 and not torch.allclose(plain.maps, got.maps)
    for bad, message in [({"refine_steps": -1}, "refine_steps must be an integer >= 0"), ({"refine_lr": 0}, "> 0")]:
        with pytest.raises(ValueError, match=message):
            build_method("amortised", model, {"checkpoint": str(path), **bad})


def test_zero_epochs_keep_the_prediction_and_need_a_predictor(setup):
    """DM with ``epochs: 0`` from the prediction is the prediction; HDM then only mixes; from tau it is refused."""
    model, explainer, path, x = setup
    params = {**SCHEDULE["params"], "epochs": 0}
    config = {"schedule": {"name": "dm", "params": params}, "init": "amortised", "init_checkpoint": str(path)}
    start, targets = explainer.predict(model, x, None)
    got = build_method("dm", model, {"config": config}).explain(x)
    for name, d in start.items():
        torch.testing.assert_close(got.explanation.stages[0].vectors[name], d, rtol=0, atol=0)
    torch.testing.assert_close(got.maps, explainer.saliency(start, 32, 32)[0])
    assert got.backward_passes == 0
    hdm = build_method("hdm", model, {"config": {**config, "stages": 2, "mixing": {"epochs": 3}}}).explain(x)
    assert hdm.backward_passes == 3 * 3  # the mixing steps only
    with pytest.raises(ValueError, match="0 steps for its first vectors: they would stay at tau"):
        build_method("dm", model, {"config": {"schedule": {"name": "dm", "params": params}}})
