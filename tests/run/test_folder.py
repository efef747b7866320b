"""The run-folder check: a config key added to the schema later does not stop an older run from resuming."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from hdm_lightning.config import ConfigError, ExplainRunConfig, load_run_config, run_defaults
from hdm_lightning.run.folder import check_run_folder


def test_a_run_saved_before_a_mapping_key_existed_resumes(tmp_path):
    cfg = OmegaConf.structured(ExplainRunConfig)
    saved = OmegaConf.to_container(cfg)
    del saved["evaluation"]["params"]  # config.yaml of a run made before evaluation.params (default {})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    check_run_folder(tmp_path, cfg)
    cfg.evaluation.params = {"my_family": {"fraction": 0.25}}
    with pytest.raises(ConfigError, match=r"evaluation.params.my_family.fraction: '<unset>' -> 0.25"):
        check_run_folder(tmp_path, cfg)


def test_a_run_saved_before_a_method_setting_existed_resumes_while_it_keeps_its_default(tmp_path):
    # explainer.init / init_checkpoint came with amortised masks; a comparison started before them must resume
    cfg, _ = load_run_config(None)
    saved = OmegaConf.to_container(cfg)
    del saved["explainer"]["init"], saved["explainer"]["init_checkpoint"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    check_run_folder(tmp_path, cfg, defaults=run_defaults(cfg.method))
    cfg.explainer.init = "amortised"
    with pytest.raises(ConfigError, match=r"explainer.init: '<unset>' -> 'amortised'"):
        check_run_folder(tmp_path, cfg, defaults=run_defaults(cfg.method))
    with pytest.raises(ConfigError, match=r"explainer.init: '<unset>' -> 'tau'"):  # no defaults: no guessing
        check_run_folder(tmp_path, load_run_config(None)[0], defaults={})


def test_a_run_scored_before_shuffled_ties_were_the_default_is_not_resumed_under_them(tmp_path):
    # a config.yaml without evaluation.ties was scored in raster order: resuming under the new default would mix
    # two tie orders in one folder's tables
    cfg = OmegaConf.structured(ExplainRunConfig)
    saved = OmegaConf.to_container(cfg)
    del saved["evaluation"]["ties"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    with pytest.raises(ConfigError, match=r"evaluation.ties: 'raster' -> 'shuffled'.*pass evaluation.ties=raster"):
        check_run_folder(tmp_path, cfg)
    cfg.evaluation.ties = "raster"
    check_run_folder(tmp_path, cfg)
