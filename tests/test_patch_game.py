"""The image-patch game on a real teacher: masking, efficiency, batching, exactness."""

from __future__ import annotations

import pytest
import torch

from infoutil.attribution.patch import (
    baseline_images,
    compiled_teacher,
    patch_index_map,
    patch_shapley,
    patch_shapley_early_stop,
    patch_values,
    stage_budgets,
)
from infoutil.attribution.shapley import shapley_values
from infoutil.data import load_dataset
from infoutil.data.augment import to_float
from infoutil.errors import UserError
from infoutil.io.checkpoint import load_teacher


@pytest.fixture(scope="module")
def game(fmnist_teacher, data_root):
    teacher = load_teacher(fmnist_teacher)
    train = load_dataset("fashion-mnist", "train", data_root)
    idx = torch.tensor([0, 1, 2, 3])
    return teacher.model, to_float(train.get_batch(idx)), train.targets[idx]


def test_patch_owner_map_partitions_the_image():
    owner = patch_index_map(28, 30, 4)
    assert owner.shape == (28, 30)
    assert torch.equal(owner.unique(), torch.arange(16))
    assert owner[0, 0] == 0 and owner[-1, -1] == 15 and owner[0, -1] == 3


def test_masked_images_match_a_naive_per_pixel_reference(game):
    model, x, y = game
    g = torch.Generator().manual_seed(0)
    Z = torch.rand((1, 6, 16), generator=g) < 0.5
    got = patch_values(model, x[:1], y[:1], Z, grid=4, baseline="black", target="logit")
    owner = patch_index_map(28, 28, 4)
    ref = []
    with torch.inference_mode():
        for z in Z[0]:
            img = x[0].clone()
            for r in range(28):
                for c in range(28):
                    if not z[owner[r, c]]:
                        img[:, r, c] = 0.0
            ref.append(model(img[None])[0, y[0]])
    assert torch.allclose(got[0], torch.stack(ref), atol=1e-5)


@pytest.mark.parametrize("baseline", ["zero", "black", "mean", "blur"])
@pytest.mark.parametrize("target", ["prob", "logit"])
def test_efficiency_against_the_teacher(game, baseline, target):
    """sum(phi) = v(all) - v(none), with v(all) the teacher on the image itself."""
    model, x, y = game
    phi = patch_shapley(
        model, x, y, baseline=baseline, target=target, estimator="leverage", budget=64, seed=1
    )
    with torch.inference_mode():
        full = model(x)
        empty = model(baseline_images(model, x, baseline, 4))
    if target == "prob":
        full, empty = full.softmax(1), empty.softmax(1)
    gap = full.gather(1, y[:, None])[:, 0] - empty.gather(1, y[:, None])[:, 0]
    assert torch.allclose(phi.sum((1, 2)), gap, atol=1e-4)


def test_zero_baseline_is_zero_at_the_network_input(game):
    model, x, _ = game
    assert torch.allclose(
        model.normalize(baseline_images(model, x, "zero", 4)), torch.zeros_like(x), atol=1e-6
    )


@pytest.mark.parametrize("estimator", ["leverage", "leverage-gp"])
def test_a_batch_equals_one_image_at_a_time(game, estimator):
    model, x, y = game

    def maps(images, labels, seed, **kw):
        return patch_shapley(model, images, labels, estimator=estimator, budget=48, seed=seed, **kw)

    batch = maps(x, y, 3)
    single = torch.cat([maps(x[i : i + 1], y[i : i + 1], 3) for i in range(len(x))])
    assert torch.allclose(batch, single, atol=1e-6)
    seeds = torch.tensor([11, 12, 13, 14])
    per_image = maps(x, y, seeds)
    alone = maps(x[2:3], y[2:3], seeds[2:3])
    assert torch.allclose(per_image[2], alone[0], atol=1e-6)
    chunked = maps(x, y, 3, batch_size=7)
    assert torch.allclose(batch, chunked, atol=1e-5)


def test_patch_game_agrees_with_the_generic_engine(game):
    """patch_shapley is shapley_values over the patch game, nothing more."""
    model, x, y = game

    def v(Z):
        return patch_values(model, x[:1], y[:1], Z[None], grid=2)[0]

    generic = shapley_values(v, 4, estimator="exact")
    assert torch.allclose(
        patch_shapley(model, x[:1], y[:1], grid=2, estimator="exact")[0].flatten().double(),
        generic,
        atol=1e-6,
    )


def test_stage_budgets_double_up_to_the_budget():
    assert stage_budgets(128, 512) == [128, 256, 512]
    assert stage_budgets(100, 512) == [100, 200, 400, 512]
    assert stage_budgets(512, 512) == [512]


@pytest.mark.parametrize("stop_at", [None, 0, 1])
def test_an_early_stopped_map_is_the_map_of_the_stage_it_stopped_at(game, stop_at):
    """Never settled: the full budget's map (patch_shapley's, same seeds); settled after stage
    ``stop_at``: that stage's map. The nested designs are evaluated once: an image costs the
    coalitions of its last stage, not the sum over stages."""
    model, x, y = game
    seeds = torch.tensor([11, 12, 13, 14])
    stages, calls = [], {}

    def settled(rows, maps, error_cov):
        assert error_cov.shape == (len(rows), 16, 16)
        stages.append(len(rows))
        group = int(rows.min()) // 3  # which group of 3 images this stage belongs to
        calls[group] = calls.get(group, -1) + 1
        return torch.full((len(rows),), calls[group] == stop_at)

    maps, forwards = patch_shapley_early_stop(
        model, x, y, seeds, settled, budget=256, first_budget=64, group=3
    )
    last = 256 if stop_at is None else (64, 128)[stop_at]
    assert torch.equal(maps, patch_shapley(model, x, y, budget=last, seed=seeds))
    assert forwards.tolist() == [last] * 4
    # groups of 3 and 1 images: each runs its own stages
    assert stages == (
        [3, 3, 1, 1] if stop_at is None else [3] * (stop_at + 1) + [1] * (stop_at + 1)
    )


def test_a_machine_that_cannot_compile_is_refused_in_one_line(game, monkeypatch, tmp_path):
    import torch._dynamo
    import torch._inductor.config as inductor

    model, x, _ = game
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled to reuse
    torch._dynamo.reset()
    # inductor's own patch restores its config (monkeypatch's undo left later compiles broken)
    try:
        with inductor.patch({"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/c++",)}):
            with pytest.raises(UserError, match="informativeness.compile: false"):
                compiled_teacher(model, x[:2])
    finally:
        torch._dynamo.reset()
