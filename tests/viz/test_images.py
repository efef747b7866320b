import torch
from PIL import Image

from hdm_lightning.viz import jet, overlay, save_png, stage_strip


def test_jet_endpoints():
    c = jet(torch.tensor([[0.0, 0.5, 1.0]]))  # [3, 1, 3]
    assert torch.allclose(c[:, 0, 0], torch.tensor([0.0, 0.0, 0.5]))  # dark blue
    assert torch.allclose(c[:, 0, 1], torch.tensor([0.5, 1.0, 0.5]))  # green-ish middle
    assert torch.allclose(c[:, 0, 2], torch.tensor([0.5, 0.0, 0.0]))  # dark red


def test_overlay_strip_and_atomic_png(tmp_path):
    img = torch.rand(3, 8, 10)
    maps = [torch.rand(1, 8, 10) for _ in range(3)]
    assert overlay(img, maps[0]).shape == (3, 8, 10)
    strip = stage_strip(img, maps, gap=2)
    assert strip.shape == (3, 8, 4 * 10 + 3 * 2)
    path = save_png(strip, tmp_path / "a" / "strip.png")
    assert Image.open(path).size == (46, 8)
    assert [p.name for p in path.parent.iterdir()] == ["strip.png"]  # no temporary left behind
