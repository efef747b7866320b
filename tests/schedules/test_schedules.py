import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.schedules import DMSchedule, MaskSchedule, MaskVector, MDMSchedule, Stage, validate_plan
from tests.toy_models import tiny_cnn


def test_registry_lists_builtins_and_rejects_unknown_and_duplicates():
    assert {"dm", "mdm"} <= set(hl.available_schedules())
    with pytest.raises(KeyError, match=r"Unknown mask schedule 'ladder'. Available: \['dm'"):
        hl.build_schedule("ladder")
    with pytest.raises(ValueError, match="'dm' is already registered"):

        @hl.register_schedule("dm")
        class Other(MaskSchedule):
            def plan(self, height, width):
                return []


def test_dm_plan_paper_cub():
    sched = DMSchedule()  # defaults = the HDM paper, arXiv 2301.04970, CUB settings
    plan = sched.plan(224, 224)
    assert [(s.name, len(s.vectors), s.steps) for s in plan] == [
        ("benchmark", 6, 800),
        ("level1", 18, 800),
        ("level2", 15, 800),
        ("level3", 9, 800),
        ("level4", 6, 800),
        ("level5", 2, 800),
    ]
    assert sched.passes_per_image(224, 224) == 56 * 800  # x3 DM runs + 400 mixing ~ 134,800 per HDM image
    by_name = {v.name: v for s in plan for v in s.vectors}
    c = by_name["d1/t2/k5"]  # a_1 = 6, t = 2, k = 5 -> 192 x 192, guided by level 4, initialised from d_1
    assert c.size == (192, 192) and c.guide == "d1/t2/k4" and c.init_from == "d1" and c.reg_weight == 100
    assert by_name["d4/t5/k1"].size == (45, 45) and "d4/t5/k2" not in by_name  # a=9, t=5 -> K = 1
    assert by_name["d1"].combine_weight == 3  # c_j^0(i) = d_i counted once per factor (Eq. 9)
    validate_plan(plan, 224, 224)


def test_mdm_plan_paper():
    plan = MDMSchedule().plan(224, 224)
    assert len(plan) == 1 and len(plan[0].vectors) == 27 and plan[0].steps == 2000
    v = plan[0].vectors[0]
    assert v.size == (6, 6) and v.reg_on == "vector" and v.consistency_weight == 1e-2 and v.lr == 3e-3
    assert plan[0].vectors[-1].size == (32, 32)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("dm", {"sizes": [6, 6]}, "must be distinct"),
        ("dm", {"factors": [1]}, "factors must be integers >= 2"),
        ("dm", {"epochs": -1}, "epochs must be >= 0"),
        ("dm", {"lr": -1}, "lr must be > 0"),
        ("dm", {"lr": float("nan")}, "lr must be > 0 and finite"),
        ("dm", {"eta": float("inf")}, "eta must be a finite number >= 0"),
        ("dm", {"sizes": ["big"]}, "an int or an \\[a, b\\] pair, got 'big'"),
        ("dm", {"step": 3}, "Known parameters: \\['sizes'"),
        ("mdm", {"steps": 0}, "steps must be >= 1"),
    ],
)
def test_bad_schedule_params_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        hl.build_schedule(name, params)


def test_plan_validation():
    v = MaskVector("a", (4, 4), lr=0.1, reg_weight=1.0, guide="missing")
    with pytest.raises(ValueError, match="its guide 'missing' must be trained in an earlier stage"):
        validate_plan([Stage("s", (v,), 3)], 32, 32)
    with pytest.raises(ValueError, match="larger than the image"):
        validate_plan([Stage("s", (MaskVector("a", (40, 4), lr=0.1, reg_weight=1.0),), 3)], 32, 32)
    with pytest.raises(ValueError, match="reg_on must be one of"):
        MaskVector("a", (4, 4), lr=0.1, reg_weight=1.0, reg_on="image")


@pytest.mark.parametrize("name", hl.available_schedules())
def test_every_registered_schedule_runs(name):
    """Registry-driven: any schedule (built-in or plugin) plans a valid, runnable set of stages."""
    small = {"dm": {"sizes": [3, 4], "factors": [2], "epochs": 2}, "mdm": {"sizes": [3, 4], "steps": 2}}
    sched = hl.build_schedule(name, small.get(name, {}))
    plan = sched.plan(16, 16)
    validate_plan(plan, 16, 16)
    assert sched.passes_per_image(16, 16) > 0


def test_user_schedule_from_own_module(tmp_path, monkeypatch):
    """A user registers a geometric ladder of rectangular vectors without touching hdm_lightning."""
    (tmp_path / "my_schedules.py").write_text(
        '''
from hdm_lightning import MaskSchedule, MaskVector, Stage, register_schedule

@register_schedule("test_ladder")
class Ladder(MaskSchedule):
    """Rectangles a x 2a for a = start * ratio^i, all in one stage."""

    def __init__(self, start=2, ratio=2, count=3, steps=5, lr=0.05, reg=0.02):
        if ratio < 2:
            raise ValueError(f"ratio must be >= 2, got {ratio!r}")
        self.sizes = [(start * ratio**i, 2 * start * ratio**i) for i in range(count)]
        self.steps, self.lr, self.reg = steps, lr, reg

    def plan(self, height, width):
        vecs = tuple(MaskVector(f"r{a}x{b}", (a, b), lr=self.lr, reg_weight=self.reg) for a, b in self.sizes)
        return [Stage("ladder", vecs, self.steps)]
'''
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_schedules  # noqa: F401

    torch.manual_seed(0)
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    out = hl.explain(tiny_cnn(), x, "dm", config={"schedule": {"name": "test_ladder", "params": {"count": 2}}})
    assert sorted(out.stages[0].vectors) == ["r2x4", "r4x8"]
    assert out.stages[0].vectors["r4x8"].shape == (1, 1, 4, 8)
    with pytest.raises(ValueError, match="ratio must be >= 2, got 1"):
        hl.build_schedule("test_ladder", {"ratio": 1})
