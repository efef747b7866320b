"""Mid-stage checkpoints: an interrupted explain call, repeated, gives exactly the uninterrupted maps."""

import lightning as L
import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.callbacks import WorkStore
from tests.toy_models import tiny_cnn

CFG = {
    "schedule": {"name": "dm", "params": {"sizes": [3, 4], "factors": [2], "epochs": 6, "lr": 0.05, "eta": 0.02}},
    "stages": 2,
    "mixing": {"epochs": 5, "lr": 0.1, "lam": 1e-4},
    "engine": {"checkpoint_every_n_steps": 2, "checkpoint_every_n_seconds": None},
}


class Interrupt(L.Callback):
    """Raise inside the fit ``prefix`` after ``after`` steps: at a step boundary, or inside the next step."""

    def __init__(self, prefix: str, after: int, inside: bool = False):
        self.prefix, self.after, self.inside = prefix, after, inside

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.prefix == self.prefix and module.steps_done == self.after and not self.inside:
            raise KeyboardInterrupt("simulated Ctrl+C")  # Lightning turns this into SystemExit(1)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.prefix == self.prefix and module.steps_done == self.after and self.inside:
            module.in_step = True  # as if killed mid-step: nothing consistent to save
            raise RuntimeError("simulated crash inside a step")


class CountSteps(L.Callback):
    def __init__(self):
        self.steps = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps[module.prefix] = self.steps.get(module.prefix, 0) + 1


def assert_same(a, b):
    assert torch.equal(a.saliency, b.saliency) and torch.equal(a.weights, b.weights)
    for sa, sb in zip(a.stages, b.stages, strict=True):
        assert torch.equal(sa.saliency, sb.saliency)
        assert sa.vectors.keys() == sb.vectors.keys() and all(
            torch.equal(sa.vectors[k], sb.vectors[k]) for k in sa.vectors
        )
    assert a.history.keys() == b.history.keys() and all(torch.equal(a.history[k], b.history[k]) for k in a.history)
    assert a.passes_per_image == b.passes_per_image


@pytest.fixture(scope="module", params=["paper", "stable"])
def setting(request):
    """Both dynamics: the stable ones also carry a learning-rate schedule and a running tail average."""
    torch.manual_seed(0)
    model = tiny_cnn(dtype=torch.float32)  # float32: resuming must be exact, not merely close
    images = torch.randn(2, 3, 16, 16)
    cfg = {**CFG, "optim": {"dynamics": request.param}}
    return model, images, hl.explain(model, images, "hdm", config=cfg), cfg


@pytest.mark.parametrize(
    "prefix,after,inside",
    [
        ("dm1/benchmark", 3, False),  # between periodic saves: the on-exception save keeps step 3
        ("dm1/level1", 5, True),  # crash inside a step: resumes from the periodic save at step 4
        ("dm2/level2", 2, False),
        ("mix", 3, True),
    ],
)
def test_interrupted_run_resumes_to_identical_maps(setting, tmp_path, prefix, after, inside):
    model, images, reference, cfg = setting
    work = tmp_path / "work"
    with pytest.raises((SystemExit, RuntimeError)):
        hl.explain(model, images, "hdm", config=cfg, callbacks=[Interrupt(prefix, after, inside)], work_dir=work)
    saved = sorted(p.name for p in work.iterdir())
    assert "inflight.pt" in saved or prefix.endswith("level1")  # the fit in flight was checkpointed
    assert "dm1__benchmark.pt" in saved or prefix == "dm1/benchmark"  # finished fits are kept
    state = WorkStore(work).load_partial(prefix)
    if state is not None:
        assert 0 < state["step"] <= after and (state["step"] == after or inside)
    count = CountSteps()
    resumed = hl.explain(model, images, "hdm", config=cfg, work_dir=work, callbacks=[count])
    assert_same(resumed, reference)
    total = CFG["mixing"]["epochs"] if prefix == "mix" else CFG["schedule"]["params"]["epochs"]
    assert count.steps[prefix] == total - (state["step"] if state is not None else 0)  # continued, not restarted
    assert not any(k.startswith("dm1/") for k in count.steps) or prefix.startswith("dm1/")


def test_work_of_other_images_is_discarded(setting, tmp_path):
    model, images, reference, cfg = setting
    work = tmp_path / "work"
    with pytest.raises(SystemExit):
        hl.explain(model, images.flip(-1), "hdm", config=cfg, callbacks=[Interrupt("dm2/benchmark", 2)], work_dir=work)
    assert (work / "dm1__benchmark.pt").is_file()
    assert_same(hl.explain(model, images, "hdm", config=cfg, work_dir=work), reference)


def test_finished_fits_are_not_retrained(setting, tmp_path, monkeypatch):
    model, images, reference, cfg = setting
    work = tmp_path / "work"
    with pytest.raises(SystemExit):
        hl.explain(model, images, "hdm", config=cfg, callbacks=[Interrupt("mix", 1)], work_dir=work)
    calls = []
    real = hl.explainers.engine.MaskStageModule.training_step
    monkeypatch.setattr(hl.explainers.engine.MaskStageModule, "training_step", lambda *a: calls.append(1) or real(*a))
    assert_same(hl.explain(model, images, "hdm", config=cfg, work_dir=work), reference)
    assert calls == []  # every DM fit came from the work folder; only the mix continued
