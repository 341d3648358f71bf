"""Crop geometry, noise, tie-breaking, top-k per class, gradient norms, utility rules, Grad-CAM."""

from __future__ import annotations

import pytest
import torch

from infoutil.attribution.gradcam import gradcam_maps
from infoutil.data import DatasetInfo
from infoutil.models import create_model
from infoutil.selection.crops import (
    cell_boxes,
    crop_and_resize,
    crop_cells,
    informative_crops,
    noise_sigma,
    pool_map,
    settled_crops,
    window_matrix,
)
from infoutil.selection.utility import (
    ClassCrops,
    crop_scores,
    grad_norms,
    grad_norms_loop,
    keep_by_rule,
    rule_badge,
    rule_cluster,
    rule_highest,
    rule_highest_correct,
    rule_lowest,
    rule_quantile,
    rule_strata,
    top_k_per_class,
)


def test_pooling_a_4x4_map_gives_3x3_quarter_windows():
    maps = torch.arange(16.0).view(1, 4, 4)
    pooled = pool_map(maps, 2)
    assert pooled.shape == (1, 3, 3)
    assert float(pooled[0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)
    boxes = cell_boxes(torch.arange(9), grid=4, kernel=2, height=32, width=32)
    assert boxes.tolist()[0] == [0, 0, 16, 16] and boxes.tolist()[-1] == [16, 16, 16, 16]
    assert boxes.tolist()[4] == [8, 8, 16, 16]  # each window a quarter of the area


def test_five_crops_last_is_the_noise_free_argmax():
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 5.0  # the bottom-right window holds the information
    gens = [torch.Generator().manual_seed(0)]
    pooled = pool_map(maps, 2)
    boxes = informative_crops(
        maps,
        noise_sigma(pooled, 2.0, "per_image"),
        kernel=2,
        num_crops=5,
        generators=gens,
        height=28,
        width=28,
    )
    assert boxes.shape == (1, 5, 4)
    assert boxes[0, -1].tolist() == [14, 14, 14, 14]
    no_noise = informative_crops(
        maps,
        torch.zeros(1),
        kernel=2,
        num_crops=5,
        generators=[torch.Generator().manual_seed(0)],
        height=28,
        width=28,
    )
    assert (no_noise[0] == no_noise[0, -1]).all()  # alpha = 0: five identical crops


def test_noise_spreads_crops_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(50, 4, 4, generator=g)
    pooled = pool_map(maps, 2)
    sigma = noise_sigma(pooled, 2.0, "per_image")
    a = crop_cells(pooled, sigma, 5, [torch.Generator().manual_seed(i) for i in range(50)])
    b = crop_cells(pooled, sigma, 5, [torch.Generator().manual_seed(i) for i in range(50)])
    assert torch.equal(a, b)
    assert (a[:, :4] != a[:, 4:]).any()  # noisy crops move away from the argmax
    assert torch.equal(a[:, 4], pooled.flatten(1).argmax(1))
    assert noise_sigma(pooled, 2.0, "global").unique().numel() == 1


def test_a_crop_is_settled_only_when_no_error_within_z_can_move_it():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(40, 4, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(maps.flatten(1) @ window_matrix(4, 2).T, pool_map(maps, 2).flatten(1))

    def settled(cov, z=3.0):
        gens = [torch.Generator().manual_seed(i) for i in range(40)]
        return settled_crops(maps, cov, kernel=2, num_crops=5, alpha=2.0, generators=gens, z=z)

    eye = torch.eye(16, dtype=torch.float64).expand(40, 16, 16)
    assert settled(eye * 1e-12).all()  # a negligible error moves nothing
    assert not settled(eye * 1e2).any()  # a huge one could move every crop
    some = settled(eye * 1e-2)
    assert some.any() and not some.all()
    assert (settled(eye * 1e-2, z=1.0) >= some).all()  # a looser bound settles more
    # an error shared by every patch moves no window against another
    assert settled(torch.ones(40, 16, 16, dtype=torch.float64) * 1e2 + eye * 1e-12).all()


def test_ties_go_to_the_first_cell():
    flat = torch.ones(1, 3, 3, dtype=torch.float64)
    cells = crop_cells(flat, torch.zeros(1), 2, [torch.Generator()])
    assert cells.tolist() == [[0, 0]]


def test_crop_inputs_resize_and_pad():
    img = torch.rand(1, 3, 32, 32)
    box = torch.tensor([[8, 8, 16, 16]])
    resized = crop_and_resize(img, box, (32, 32), "resize")
    padded = crop_and_resize(img, box, (32, 32), "pad", fill=torch.tensor([0.1, 0.2, 0.3]))
    assert resized.shape == padded.shape == (1, 3, 32, 32)
    assert torch.equal(padded[0, :, 8:24, 8:24], img[0, :, 8:24, 8:24])
    assert float(padded[0, 1, 0, 0]) == pytest.approx(0.2)


def test_top_k_per_class_ranks_and_breaks_ties_by_index():
    scores = torch.tensor([0.5, 2.0, 2.0, 1.0, 9.0, 3.0])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    top = top_k_per_class(scores, classes, 2, 2)
    assert [t.tolist() for t in top] == [[1, 2], [4, 5]]
    low = top_k_per_class(scores, classes, 1, 2, descending=False)
    assert [t.tolist() for t in low] == [[0], [3]]


@pytest.mark.parametrize("arch", ["convnet3", "resnet18"])
def test_vectorised_grad_norms_equal_the_autograd_loop(arch):
    info = DatasetInfo("x", tuple("abcdefghij"), 32, 3, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = create_model(arch, info)
    with torch.no_grad():  # give batch norm non-trivial running statistics
        model.train()
        model(torch.rand(16, 3, 32, 32))
    x, y = torch.rand(5, 3, 32, 32), torch.randint(0, 10, (5,))
    fast = grad_norms(model, x, y, batch_size=2)
    slow = grad_norms_loop(model, x, y)
    assert torch.allclose(fast, slow, rtol=1e-3)
    last = grad_norms(model, x, y, mode="last_layer")
    assert torch.allclose(
        last, grad_norms_loop(model, x, y, list(model.fc.parameters())), rtol=1e-4
    )
    assert (last < fast).all()  # a part of the gradient is smaller than the whole


# ---------------------------------------------------------------- utility rules


def _crops(score, correct=None, source=None, gram=None, seed=0, embed=None):
    score = torch.tensor(score, dtype=torch.float64)
    n = len(score)
    return ClassCrops(
        score=score,
        correct=torch.ones(n, dtype=torch.bool) if correct is None else torch.tensor(correct),
        source=torch.arange(n) if source is None else torch.tensor(source),
        generator=torch.Generator().manual_seed(seed),
        embed=embed,
    )


def test_ranking_rules_and_one_crop_per_source():
    crops = _crops([5.0, 4.0, 3.0, 2.0, 1.0], source=[0, 0, 1, 1, 2])
    assert rule_highest(crops, 3, False).tolist() == [0, 1, 2]
    assert rule_highest(crops, 3, True).tolist() == [0, 2, 4]  # the best crop of each source
    assert rule_lowest(crops, 2, False).tolist() == [4, 3]
    assert rule_lowest(crops, 3, True).tolist() == [4, 3, 1]


def test_keep_by_rule_applies_the_configs_rule_and_per_source():
    from infoutil.config import UtilityConfig

    crops = _crops([5.0, 4.0, 3.0, 2.0, 1.0], source=[0, 0, 1, 1, 2])
    highest = UtilityConfig(select="highest", per_source="all")
    assert keep_by_rule(highest, crops, 3).tolist() == [0, 1, 2]
    lowest_best = UtilityConfig(select="lowest", per_source="best")
    assert keep_by_rule(lowest_best, crops, 3).tolist() == [4, 3, 1]


def test_crop_scores_norm_from_the_utility_model_view_from_the_judge():
    info = DatasetInfo("x", tuple("abcdefghij"), 32, 3, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model, judge = create_model("convnet3", info), create_model("convnet3", info)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 3, 9])
    own = crop_scores(model, x, y, batch_size=2)
    judged = crop_scores(model, x, y, judge=judge, batch_size=2)
    assert torch.allclose(own["grad_norm"], grad_norms(model, x, y))
    assert torch.equal(own["grad_norm"], judged["grad_norm"])
    with torch.no_grad():
        p = torch.softmax(judge(x).double(), 1)
    assert torch.allclose(judged["prob"], p[torch.arange(4), y], atol=1e-6)
    assert torch.equal(judged["pred"], p.argmax(1))
    assert not torch.allclose(own["prob"], judged["prob"])


def test_highest_correct_keeps_the_teacher_right_crops_first():
    crops = _crops([9.0, 8.0, 3.0, 2.0, 1.0], correct=[False, True, True, False, False])
    assert rule_highest_correct(crops, 2, False).tolist() == [1, 2]
    # too few correct: the wrong ones follow, easiest (lowest norm) first
    assert rule_highest_correct(crops, 4, False).tolist() == [1, 2, 4, 3]


def test_quantile_takes_the_band_around_the_median():
    crops = _crops([float(v) for v in [10, 0, 5, 9, 1, 4, 6, 2, 8, 3, 7]])  # 0..10 shuffled
    picked = rule_quantile(crops, 3, False, quantile=0.5)
    assert sorted(float(crops.score[i]) for i in picked) == [4.0, 5.0, 6.0]
    top = rule_quantile(crops, 2, False, quantile=1.0)
    assert sorted(float(crops.score[i]) for i in top) == [9.0, 10.0]


def test_strata_drop_the_hardest_and_cover_the_range():
    score = [float(v) for v in range(100)]
    crops = _crops(score, seed=3)
    picked = rule_strata(crops, 10, False, strata=10, hardest_cut=0.1)
    values = sorted(float(crops.score[i]) for i in picked)
    assert len(values) == 10 and max(values) < 90  # the hardest 10% are gone
    assert len({int(v // 9) for v in values}) == 10  # one from each of the 10 strata
    again = rule_strata(_crops(score, seed=3), 10, False, strata=10, hardest_cut=0.1)
    assert torch.equal(picked, again)  # seeded
    sources = [i // 10 for i in range(100)]  # ten crops per source
    one = rule_strata(_crops(score, source=sources), 9, True, strata=3, hardest_cut=0.0)
    assert len({sources[i] for i in one.tolist()}) == 9


def test_badge_starts_at_the_largest_embedding_and_spreads_out():
    # embeddings: two tight clusters and one far point with the largest norm
    emb = torch.tensor(
        [[1.0, 0.0], [1.01, 0.0], [0.99, 0.01], [0.0, 1.0], [0.0, 1.02], [5.0, 5.0]],
        dtype=torch.float64,
    )
    # with a zero logit error of one, the Gram matrix is h h^T + 1: a constant shift of it
    crops = _crops([0.0] * 6, embed=lambda: (torch.ones(6, 1, dtype=torch.float64), emb))
    picked = rule_badge(crops, 3, False).tolist()
    assert picked[0] == 5
    assert {0, 1, 2} & set(picked) and {3, 4} & set(picked)  # one from each cluster
    same_source = _crops(
        [0.0] * 6,
        source=[0, 0, 0, 1, 1, 2],
        embed=lambda: (torch.ones(6, 1, dtype=torch.float64), emb),
    )
    assert sorted(rule_badge(same_source, 3, True).tolist())[-1] == 5
    assert len({[0, 0, 0, 1, 1, 2][i] for i in rule_badge(same_source, 3, True)}) == 3


def test_gradcam_finds_the_bright_patch():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 16 * 16, 3),
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[4].weight.fill_(0.01)
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 8:16, 24:32] = 1.0  # grid cell (1, 3)
    maps = gradcam_maps(net, img, torch.tensor([0]), grid=4)
    assert maps.shape == (1, 4, 4) and int(maps.flatten().argmax()) == 1 * 4 + 3


def test_herding_and_kcenter_against_plain_oracles():
    from infoutil.methods.baselines import herding, kcenter

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 5, generator=g, dtype=torch.float64)
    # herding: each step the point that brings the running mean nearest the mean
    mu, chosen, total = feats.mean(0), [], torch.zeros(5, dtype=torch.float64)
    for t in range(6):
        best = min(
            (i for i in range(30) if i not in chosen),
            key=lambda i: float(((mu - (total + feats[i]) / (t + 1)) ** 2).sum()),
        )
        chosen.append(best)
        total += feats[best]
    assert herding(feats, 6) == chosen
    # k-center on the line: start nearest the mean, then always the farthest point
    line = torch.tensor([[0.0], [1.0], [2.0], [4.0], [10.0]], dtype=torch.float64)
    # the mean is 3.4: 4.0 first, then 10.0 (6 away), then 0.0 (4 away from 4.0)
    assert kcenter(line, 3) == [3, 4, 0]


def test_cluster_takes_the_easiest_crop_of_each_feature_group():
    # three tight groups in feature space, of sizes 3, 2, 2; each has another easiest crop
    h = torch.tensor(
        [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [10.1, 0.0], [0.0, 10.0], [0.1, 10.0]],
        dtype=torch.float64,
    )
    score = [5.0, 1.0, 8.0, 2.0, 6.0, 7.0, 3.0]

    def embed():
        return torch.zeros(7, 2), h

    assert sorted(rule_cluster(_crops(score, embed=embed), 3, False).tolist()) == [1, 3, 6]
    # one crop per source: the last group's easiest crop shares its image with the first's,
    # which (the largest group) went first
    shared = _crops(score, source=[0, 1, 2, 3, 4, 5, 1], embed=embed)
    assert sorted(rule_cluster(shared, 3, True).tolist()) == [1, 3, 5]
    assert len(rule_cluster(_crops(score, embed=embed), 5, False)) == 5  # then the easiest left
    # the control: the crop nearest each group's mean, whatever its norm
    line = torch.tensor([[0.0], [1.0], [2.0], [20.0], [21.0], [22.0]], dtype=torch.float64)
    spread = _crops([0.0, 5.0, 1.0, 0.0, 5.0, 1.0], embed=lambda: (torch.zeros(6, 2), line))
    assert sorted(rule_cluster(spread, 2, False).tolist()) == [0, 3]
    assert sorted(rule_cluster(spread, 2, False, cluster_pick="medoid").tolist()) == [1, 4]
