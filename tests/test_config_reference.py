"""The config reference (docs/configuration.md) is generated from the schema and cannot drift from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hdm_lightning import config as C
from hdm_lightning.config import TrainClassifierConfig
from hdm_lightning.config.reference import BEGIN, DOC, END, UndocumentedKeyError, keys, reference, update_reference

DOC_FILE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def leaves(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        if OmegaConf.is_dict(v) and OmegaConf.get_type(v) is not dict:  # a nested structured config
            out += leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_docs_hold_the_current_reference():
    assert DOC == DOC_FILE  # the module's default target is the repository's docs/configuration.md
    assert update_reference(DOC_FILE), (
        "docs/configuration.md's config reference is out of date: run python -m hdm_lightning.config.reference --write"
    )


@pytest.mark.parametrize("schema", [C.ExplainRunConfig, TrainClassifierConfig, *C.METHOD_CONFIGS.values()])
def test_every_schema_key_is_documented_with_its_default(schema):
    documented = {k: d for k, d, _ in keys(schema)}
    cfg = OmegaConf.structured(schema)
    assert set(documented) == set(leaves(cfg))
    for key, default in documented.items():
        assert OmegaConf.select(cfg, key) == default or (default == [] and not OmegaConf.select(cfg, key)), key
    text = DOC_FILE.read_text().split(BEGIN)[1].split(END)[0]
    prefix = "explainer." if schema in C.METHOD_CONFIGS.values() else ""
    own_tables = {"explainer": "`explainer.*`", "methods": "`methods[]`"}  # documented in tables of their own
    for key in documented:
        assert f"`{prefix}{key}`" in text or own_tables.get(key, "-") in text, key


def test_an_undocumented_key_fails():
    @dataclasses.dataclass
    class Extended(C.OutputConfig):
        shiny: bool = False

    with pytest.raises(UndocumentedKeyError, match=r"config key 'shiny' \(Extended.shiny\) has no documentation"):
        keys(Extended)


def test_reference_names_the_per_method_defaults():
    text = reference()
    assert "| `explainer.threshold.value` | hdm/dm: `0.5`; mdm: `5` |" in text
    assert "| `explainer.stages` | `3` | (hdm only)" in text
    assert "| `trainer.devices` | `1` |" in text
