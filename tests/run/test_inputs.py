"""A run folder records the content of the files its config names; a rerun against a changed one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hdm_lightning.cli import explain_main
from hdm_lightning.config import ConfigError
from hdm_lightning.models import Preprocess, build_backbone, save_classifier_checkpoint
from hdm_lightning.run.inputs import check_inputs, input_digests, write_inputs
from tests.fixtures import make_folder_tree

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    prep = Preprocess(size=32, resize=32, interpolation="bilinear")
    return save_classifier_checkpoint(path, build_backbone("resnet18", 4), "resnet18", 4, list("abcd"), prep)


def test_a_rerun_against_a_retrained_classifier_checkpoint_is_refused(tmp_path, capsys):
    data = make_folder_tree(tmp_path / "data", classes=None, per_class=2)
    swap, out = _checkpoint(tmp_path / "swap.pt", 0), tmp_path / "out"
    args = ["--config", TINY, f"data.root={data}", f"output.dir={out}", f"classifier.checkpoint={swap}"]
    args += ["classifier.num_classes=null", "wandb.mode=disabled", "explainer.stages=1"]
    assert explain_main(args) == 0
    assert explain_main(args) == 0  # the same file: resumes (nothing left to do)
    assert "0 images explained, 2 skipped" in capsys.readouterr().out
    _checkpoint(swap, 1)  # retrained in place: other weights under the same name
    assert explain_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: classifier.checkpoint: the file") and str(swap) in err and "has changed" in err
    assert "output.resume=false" in err and "Traceback" not in err
    assert explain_main([*args, "output.resume=false"]) == 0  # starts afresh, the old run moved aside
    assert len(list(out.glob("previous-*"))) == 1


def test_changed_explainer_file_and_schedule_module_are_refused(tmp_path, monkeypatch):
    explainer = tmp_path / "explainer.pt"
    explainer.write_bytes(b"weights v1")
    module = tmp_path / "my_schedules_for_inputs_test.py"
    module.write_text("STEPS = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.create(
        {
            "imports": ["my_schedules_for_inputs_test"],
            "explainer": {"init_checkpoint": str(explainer)},
            "methods": [{"name": "amortised", "params": {"checkpoint": str(explainer)}}],
        }
    )
    assert set(input_digests(cfg)) == {
        "imports: my_schedules_for_inputs_test",
        "explainer.init_checkpoint",
        "methods[0].params.checkpoint",
    }
    write_inputs(tmp_path, cfg)
    check_inputs(tmp_path, cfg)  # nothing changed
    explainer.write_bytes(b"weights v2")
    with pytest.raises(ConfigError, match="explainer.init_checkpoint: the file .*explainer.pt' has changed"):
        check_inputs(tmp_path, cfg)
    explainer.write_bytes(b"weights v1")
    module.write_text("STEPS = 2\n")
    with pytest.raises(ConfigError, match="imports: my_schedules_for_inputs_test: the file .* has changed"):
        check_inputs(tmp_path, cfg)
