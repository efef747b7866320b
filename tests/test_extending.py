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
