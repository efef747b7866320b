"""Extending from outside the package: a new saliency method is one file plus one registration.

The plugin lives in a temporary folder, is imported by ``explain.py`` through the config's ``imports:``, and is
compared with a built-in method in one run. It runs in a subprocess, so the registration does not leak into the
other tests' registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdm_lightning.io import load_tensors

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A centre-bias map: a Gaussian around the image centre, whatever the image (a control, no model pass)."""

import torch

from hdm_lightning import SaliencyMethod, register_method


@register_method("centre_bias")
class CentreBias(SaliencyMethod):
    def __init__(self, model, sigma: float = 0.25):
        super().__init__(model)
        self.sigma = float(sigma)

    def attribute(self, images, target):
        b, _, h, w = images.shape
        y = torch.linspace(-0.5, 0.5, h, device=images.device).view(h, 1)
        x = torch.linspace(-0.5, 0.5, w, device=images.device).view(1, w)
        g = torch.exp(-(x**2 + y**2) / (2 * self.sigma**2))
        return g.expand(b, 1, h, w)
'''


@pytest.mark.slow
def test_a_method_registered_by_a_plugin_runs_in_a_comparison(tmp_path):
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(REPO / "explain.py"),
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "imports=[my_methods]",
        "data.kind=photos",
        "data.photos=[chelsea,coffee]",
        "methods=[{name: centre_bias, params: {sigma: 0.2}}, {name: gradient}]",
        f"output.dir={out}",
        "wandb.mode=disabled",
    ]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "methods" / "centre_bias" / "records" / "chelsea.json").read_text())
    assert rec["status"] == "ok" and rec["forward_per_image"] == 0 and rec["backward_per_image"] == 0
    saved = load_tensors(out / "methods" / "centre_bias" / "maps" / "chelsea.pt")["saliency"]
    y = torch.linspace(-0.5, 0.5, 32).view(32, 1)
    g = torch.exp(-(y**2 + y.T**2) / (2 * 0.2**2))
    assert torch.allclose(saved[0], (g - g.min()) / (g.max() - g.min()), atol=1e-6)
    assert (out / "methods" / "gradient" / "records" / "coffee.json").is_file()
    assert "centre_bias" in (out / "manifest.csv").read_text()


def test_an_unknown_method_names_the_registered_ones_and_imports(tmp_path):
    args = [
        sys.executable,
        str(REPO / "explain.py"),
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "data.kind=photos",
        "methods=[{name: centre_bias}]",
        f"output.dir={tmp_path / 'out'}",
        "wandb.mode=disabled",
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "centre_bias" in proc.stderr and "Available" in proc.stderr and "Traceback" not in proc.stderr


EXERCISE = """
import numpy as np
import torch

import hdm_lightning as hl
import my_kinds  # noqa: F401
import my_methods  # noqa: F401
import my_metrics  # noqa: F401
import my_schedules  # noqa: F401
from hdm_lightning.data import DATASETS
from hdm_lightning.metrics import METRICS, build_family
from hdm_lightning.models import build_backbone
from hdm_lightning.models.small_cnn import small_cnn_preprocess

torch.manual_seed(0)
model = build_backbone("small_cnn", 3).eval()
x = torch.randn(2, 3, 32, 32)
schedule = {"name": "ladder", "params": {"start": 2, "count": 2, "steps": 2}}
out = hl.explain(model, x, "dm", config={"schedule": schedule})
print("ladder", tuple(out.saliency.shape), sorted(out.history))
result = hl.build_method("grad_x_input", model).explain(x, torch.tensor([0, 2]))
print("grad_x_input", tuple(result.maps.shape), result.forward_passes, result.backward_passes)
signed = {"name": "grad_x_input", "label": "signed", "params": {"absolute": False}}
cmp = hl.compare(model, x, ["grad_x_input", signed], ["centre"])
same = torch.equal(cmp.maps["signed"], hl.explain(model, x, "grad_x_input", config={"absolute": False}).maps)
print("compare", cmp.labels, sorted(cmp.tables), same)
metric = build_family("centre", fraction=0.5)
maps = torch.zeros(2, 1, 32, 32)
maps[0, :, 8:24, 8:24] = 1.0  # all of the mass in the central box
maps[1, :, :4, :4] = 1.0  # none of it
metric.update(x, maps, torch.tensor([0, 0]))
print("centre", [round(float(v), 3) for v in metric.last["centre"]], "families" , "centre" in METRICS.names())
for i in range(2):
    np.save(f"arrays/a{i}.npy", np.full((20, 20, 3), 40 * i, dtype=np.uint8))
data = DATASETS.get("npy")("arrays", small_cnn_preprocess())
print("npy", len(data), data[1].id, tuple(data[1].image.shape), data.describe())
"""


def test_the_extension_guide_examples_run_as_written(tmp_path):
    """docs/extending.md's four code examples, each saved as its own module outside the package, then used."""
    text = (REPO / "docs" / "extending.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    names = [b.splitlines()[0].removeprefix("# ").split()[0] for b in blocks]
    assert names == ["my_schedules.py", "my_methods.py", "my_metrics.py", "my_kinds.py"], names
    for name, block in zip(names, blocks, strict=True):
        (tmp_path / name).write_text(block)
    (tmp_path / "arrays").mkdir()
    (tmp_path / "exercise.py").write_text(EXERCISE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "exercise.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["ladder"] == "(2, 1, 32, 32) ['dm/ladder']"  # the schedule's one stage
    assert lines["grad_x_input"] == "(2, 1, 32, 32) 2 2"
    assert lines["compare"] == "['grad_x_input', 'signed'] ['centre', 'cost'] True"  # plugins in hl.compare
    assert lines["centre"] == "[1.0, 0.0] families True"
    assert lines["npy"].startswith("2 a1.npy (3, 64, 64) npy arrays: 2 at arrays")
