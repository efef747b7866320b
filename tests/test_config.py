from pathlib import Path

import pytest

import hdm_lightning as hl
from hdm_lightning.config import load_preset, method_config

PRESETS = sorted((Path(__file__).parents[1] / "configs" / "methods").glob("*.yaml"))


def test_defaults_are_the_paper_settings():
    cfg = method_config("hdm")
    assert cfg.stages == 3 and cfg.mixing.epochs == 400 and cfg.mixing.lr == 0.1 and cfg.mixing.lam == 1e-4
    sched = hl.build_schedule(cfg.schedule.name, dict(cfg.schedule.params))
    assert sched.sizes == [(a, a) for a in range(6, 12)] and sched.factors == [2, 3, 5]
    assert sched.epochs == 800 and sched.lr == 1e-2 and sched.eta == 100
    mdm = method_config("mdm")
    assert mdm.threshold.kind == "value" and mdm.threshold.value == 5


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_builds(path):
    method, cfg = load_preset(path)
    _, schedule, _, _ = hl.METHODS.get(method).check_config(cfg)
    assert schedule.passes_per_image(224, 224) > 0


def test_presets_hold_the_papers_numbers():
    _, cub = load_preset(PRESETS[[p.stem for p in PRESETS].index("hdm_cub")])
    assert dict(cub.schedule.params) == {
        "sizes": [6, 7, 8, 9, 10, 11],
        "factors": [2, 3, 5],
        "epochs": 800,
        "lr": 0.01,
        "eta": 100.0,
    }
    _, pm = load_preset(PRESETS[[p.stem for p in PRESETS].index("hdm_ichallenge")])
    assert pm.stages == 1 and list(pm.schedule.params.factors) == [2, 3] and pm.threshold.value == 0.7
    _, mdm = load_preset(PRESETS[[p.stem for p in PRESETS].index("mdm_cub")])
    assert len(mdm.schedule.params.sizes) == 27 and mdm.schedule.params.steps == 2000


def test_unknown_key_and_bad_type_are_named():
    with pytest.raises(ValueError, match="'stagez'"):
        method_config("hdm", {"stagez": 2})
    with pytest.raises(ValueError, match="'mixing.epochs'"):
        method_config("hdm", {"mixing": {"epochs": "many"}})
    with pytest.raises(ValueError, match="for method 'mdm', not 'hdm'"):
        method_config("hdm", {"method": "mdm"})
    with pytest.raises(ValueError, match="does not exist"):
        method_config("dm", "no/such/preset.yaml")
    with pytest.raises(ValueError, match="aux_reference must be one of"):
        model, images = _tiny()
        hl.build_method("dm", model, {"config": {"aux_reference": "last"}}).explain(images)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"schedule": {"params": {"lr": float("nan")}}}, "schedule.params.lr"),
        ({"schedule": {"params": {"eta": "nan"}}}, "schedule.params.eta"),
        ({"mixing": {"lr": float("nan")}}, "mixing.lr"),
        ({"threshold": {"value": float("inf")}}, "threshold.value"),
    ],
)
def test_nan_and_inf_settings_are_refused_when_the_method_is_built(overrides, key):
    with pytest.raises(ValueError, match=f"{key} must be a finite number"):
        method_config("hdm", overrides)
    model, _ = _tiny()
    with pytest.raises(ValueError, match=f"{key} must be a finite number"):
        hl.HDM(model, overrides)


@pytest.mark.parametrize(
    "override",
    [
        "explainer.schedule.params.lr=nan",
        "explainer.schedule.params.eta=nan",
        "explainer.mixing.lr=nan",
        "explainer.tau=inf",
        "evaluation.ci_level=-inf",
    ],
)
def test_nan_and_inf_settings_are_refused_where_the_run_config_is_loaded(override):
    from hdm_lightning.config import ConfigError, load_run_config

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        load_run_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [override])


def test_the_text_nan_is_a_number_only_where_a_number_is_read_from_text():
    from hdm_lightning.config import load_run_config

    cfg, _ = load_run_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", ["wandb.name=nan", "data.ids=[inf]"])
    assert cfg.wandb.name == "nan" and list(cfg.data.ids) == ["inf"]


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path):
    from hdm_lightning.config import ConfigError, load_run_config

    path = tmp_path / "list.yaml"
    path.write_text("- method: hdm\n- batch_size: 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        load_run_config(path, [])
    with pytest.raises(ValueError, match="must hold a mapping of settings"):
        method_config("dm", path)
    with pytest.raises(ValueError, match="must hold a mapping of settings"):
        load_preset(path)


@pytest.mark.parametrize(("threshold", "advice"), [(0.5, "below 0.5"), (0.9, "e.g. threshold: {kind: quantile")])
def test_the_all_zero_maps_warning_does_not_advise_the_value_already_set(threshold, advice):
    model, images = _tiny()
    config = {"schedule": {"params": {"sizes": [2], "factors": [2], "epochs": 1, "lr": 1e-30}}}
    config["threshold"] = {"kind": "quantile", "value": threshold}
    with pytest.warns(UserWarning, match="maps are all zero") as caught:
        hl.DM(model, config).explain(images)
    (message,) = [str(w.message) for w in caught if "all zero" in str(w.message)]
    assert advice in message
    if threshold == 0.5:
        assert "value: 0.5" not in message


def _tiny():
    import torch

    from tests.toy_models import tiny_cnn

    return tiny_cnn(), torch.zeros(1, 3, 8, 8, dtype=torch.float64)
