import math

import pytest
import torch

from hdm_lightning.masks import ops


def test_upsample_modes_and_shapes():
    v = torch.rand(2, 1, 3, 4)
    up = ops.upsample(v, 12, 16)
    assert up.shape == (2, 1, 12, 16)
    ref = torch.nn.functional.interpolate(v, size=(12, 16), mode="bilinear", align_corners=False)
    assert torch.equal(up, ref)
    near = ops.upsample(v, 6, 8, "nearest")
    assert torch.equal(near[..., ::2, ::2], v)
    assert ops.upsample(torch.rand(5, 2, 1, 3, 3), 9, 9).shape == (5, 2, 1, 9, 9)
    with pytest.raises(ValueError, match="Unknown upsample mode 'cubic'"):
        ops.upsample(v, 4, 4, "cubic")


def test_normalize_per_image_and_constant_guard():
    x = torch.stack([torch.arange(4.0).view(1, 2, 2), torch.full((1, 2, 2), 3.0)])
    n = ops.normalize(x)
    assert torch.equal(n[0].flatten(), torch.tensor([0, 1 / 3, 2 / 3, 1]))
    assert torch.equal(n[1], torch.zeros(1, 2, 2))  # max == min -> zeros, not NaN


def test_threshold_quantile_and_value():
    x = torch.arange(100.0).view(1, 1, 10, 10)
    assert ops.Threshold("quantile", 0.7).gamma(x).item() == pytest.approx(69.3)
    assert ops.Threshold("value", 5).gamma(x).item() == 5
    with pytest.raises(ValueError, match="Unknown threshold kind 'top'"):
        ops.Threshold("top", 0.3)
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\], got 30"):
        ops.Threshold("quantile", 30)


def test_dm_and_mdm_finishing():
    mc = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    mb, keep, gamma = ops.dm_combine_threshold(mc, ops.Threshold("value", 1.0))
    assert torch.equal(mb, torch.tensor([[[[0.0, 0.0], [0.5, 1.0]]]]))  # N((M_c - 1){M_c >= 1})
    assert keep.tolist() == [[[[False, True], [True, True]]]] and gamma.tolist() == [1.0]
    mh, mbin, _ = ops.mdm_combine_threshold(mc, ops.Threshold("value", 2.0))
    assert torch.equal(mh, torch.tensor([[[[0.0, 0.0], [2 / 3, 1.0]]]]))  # N({sum >= 2} sum)
    assert mbin.sum() == 2


def test_hdm_weights_and_mix():
    v = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(ops.hdm_weights(v), torch.tensor([[14.0, 13.0, 9.0]]))  # w_j = sum_{k>=j} v_k^2
    v = torch.randn(5, 4)
    w = ops.hdm_weights(v)
    assert (w[:, :-1] >= w[:, 1:]).all()
    maps = torch.rand(5, 4, 1, 6, 6)
    mh = ops.mix_maps(maps, v)
    expect = (w[..., None, None, None] * maps).sum(1) / w.sum(1)[:, None, None, None]
    assert torch.allclose(mh, expect) and mh.min() >= 0 and mh.max() <= 1


def test_hierarchical_masked_image():
    x0 = torch.ones(1, 3, 2, 2)
    m1 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    m2 = torch.tensor([[[[0.0, 0.5], [0.0, 0.0]]]])
    x2 = ops.hierarchical_masked_image(x0, [m1, m2])
    assert torch.equal(x2[0, 0], torch.tensor([[0.0, 0.5], [1.0, 1.0]]))  # (1 - N(M1 + M2)) X0


def test_l1_and_consistency():
    assert torch.equal(ops.l1_mean(torch.tensor([[[[-1.0, 3.0]]]])), torch.tensor([[2.0]]))
    assert torch.equal(ops.consistency(torch.tensor([3.0]), torch.tensor([1.0])), torch.tensor([4.0]))


# K_j^i for 224 x 224 (the HDM paper, arXiv 2301.04970, §3.2), with the paper's CUB sizes and factors.
K_224 = {
    (6, 2): 5,
    (6, 3): 3,
    (6, 5): 2,
    (7, 2): 5,
    (7, 3): 3,
    (7, 5): 2,
    (8, 2): 4,
    (8, 3): 3,
    (8, 5): 2,
    (9, 2): 4,
    (9, 3): 2,
    (9, 5): 1,
    (10, 2): 4,
    (10, 3): 2,
    (10, 5): 1,
    (11, 2): 4,
    (11, 3): 2,
    (11, 5): 1,
}


@pytest.mark.parametrize(("a", "t"), sorted(K_224))
def test_level_table_224(a, t):
    assert ops.levels(224, 224, a, a, t) == K_224[(a, t)]


def test_levels_match_paper_formula_and_exact_powers():
    for a in range(1, 60):
        for t in range(2, 8):
            k = ops.levels(224, 224, a, a, t)
            assert a * t**k <= 224 < a * t ** (k + 1)
            logs = math.log(224 / a) / math.log(t)
            if abs(logs - round(logs)) > 1e-9:  # away from exact powers the float formula agrees
                assert k == math.floor(logs)
    assert ops.levels(224, 224, 7, 7, 2) == 5  # 7 * 2^5 = 224 exactly
    assert ops.levels(224, 100, 6, 6, 2) == 4  # min over height and width
    with pytest.raises(ValueError, match="factor t must be an integer >= 2"):
        ops.levels(224, 224, 6, 6, 1)


def test_total_variation_is_the_mean_neighbour_difference():
    v = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)[None, None]
    horizontal = (1 + 0 + 0 + 1) / 4
    vertical = (0 + 1 + 0) / 3
    assert ops.total_variation(v).item() == pytest.approx((horizontal + vertical) / 2)
    assert ops.total_variation(torch.full((2, 1, 4, 5), 0.3)).abs().max().item() == 0
    assert ops.total_variation(torch.ones(1, 1, 1, 1)).item() == 0


def test_l2_and_tv_terms_join_the_sparsity_term():
    p = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    m, plain = ops.vector_mask(p, None, 12, 12)
    m2, reg = ops.vector_mask(p, None, 12, 12, l2=0.5, tv=2.0)
    assert torch.equal(m, m2)  # the mask itself does not change
    expected = plain + 0.5 * (m * m).flatten(1).mean(1) + 2.0 * ops.total_variation(p)[:, 0]
    torch.testing.assert_close(reg, expected, rtol=0, atol=1e-15)
    _, zero = ops.vector_mask(p, None, 12, 12, l2=0.0, tv=0.0)
    assert torch.equal(zero, plain)  # both 0: the papers' L_R bit for bit


def test_dm_schedule_puts_tv_on_the_levels_it_names():
    from hdm_lightning.schedules.builtin import DMSchedule

    plan = DMSchedule(sizes=[6], factors=[2], epochs=1, l2=0.1, tv=3.0, tv_from_level=2).plan(96, 96)
    weights = {v.name: (v.l2_weight, v.tv_weight) for s in plan for v in s.vectors}
    assert weights["d1"] == (0.1, 0.0) and weights["d1/t2/k1"] == (0.1, 0.0) and weights["d1/t2/k2"] == (0.1, 3.0)
    with pytest.raises(ValueError, match="l2 and tv must be finite and >= 0"):
        DMSchedule(tv=float("nan"))
    with pytest.raises(ValueError, match="l2 and tv must be finite and >= 0"):
        DMSchedule(l2=-1.0)
