"""End-to-end distillation on real data: the files, their round trip, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infoutil.config import DistillConfig, build_config
from infoutil.errors import UserError
from infoutil.io.distilled import VARYING_FILES, load_distilled
from infoutil.methods import distill
from tests.helpers import assert_one_line_error, fmnist_distill, quiet, run_cli, small_config


def _cfg(method="infoutil", ipc=2, **kw):
    return small_config(method, ipc=ipc, **kw)


@pytest.fixture(scope="module")
def distilled(fmnist_teacher, data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("d") / "infoutil"
    distill(_cfg(), fmnist_teacher, out, run=quiet(data_root))
    return out


def test_distilled_set_round_trips(distilled):
    ds = load_distilled(distilled)
    assert len(ds) == 20 and ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert ds.logits.shape == (20, 1, 10) and ds.factor == 1
    manifest = json.loads((distilled / "manifest.json").read_text())
    entry = manifest["images"][3]
    assert entry["file"] == "images/001_Trouser/00001.png"
    patch = entry["patches"][0]
    assert set(patch) >= {"source_index", "source_id", "box", "grad_norm", "shapley_map", "crop"}
    assert len(patch["shapley_map"]) == 4 and patch["box"][2:] == [14, 14]
    assert manifest["teacher"]["weights_sha256"] and manifest["seed"] == 0
    scores = load_file(str(distilled / "scores.safetensors"))
    assert scores["shapley"].shape == (60, 4, 4) and scores["grad_norm"].shape == (60, 5)
    assert int(scores["selected"].sum()) == 20
    # the selected crops are each class's highest gradient norms
    norms = torch.nan_to_num(scores["grad_norm"], nan=-1.0)
    cls = scores["candidate_labels"]
    for c in range(10):
        mine = norms[cls == c].flatten()
        assert set(mine.topk(2).values.tolist()) == set(
            norms[cls == c][scores["selected"][cls == c]].tolist()
        )
    # the images are the selected crops, resized to full size
    train_img = ds.images[0]
    assert train_img.float().std() > 0
    stats = json.loads((distilled / "run_stats.json").read_text())
    assert [st["stage"] for st in stats["stages"]][:3] == ["quarter probe", "shapley", "utility"]
    assert stats["peak_rss_mib"] > 100  # torch alone is larger than this


def test_the_report_of_a_paper_recipe_set_shows_its_maps(distilled, tmp_path):
    from infoutil.report.html import build_report

    page = build_report(distilled.parent, tmp_path / "report")
    html = page.read_text()
    assert "Shapley heatmap" in html and "No attribution maps" not in html
    assert (tmp_path / "report" / "figures" / "candidates_infoutil_ipc2.png").stat().st_size > 1000


def test_same_seed_same_bytes_from_scratch(
    distilled, fmnist_teacher, data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("INFOUTIL_CACHE", str(tmp_path / "fresh-cache"))  # recompute everything
    again = tmp_path / "again"
    distill(_cfg(), fmnist_teacher, again, run=quiet(data_root))
    files = sorted(p.relative_to(distilled) for p in distilled.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        if rel.name not in VARYING_FILES:
            assert (distilled / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other-seed"
    distill(_cfg(seed=1), fmnist_teacher, other, run=quiet(data_root))
    assert (other / "labels.safetensors").read_bytes() != (
        distilled / "labels.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("method", ["rded", "random", "herding", "kcenter", "full"])
def test_every_baseline_loads(method, fmnist_teacher, data_root, tmp_path):
    out = tmp_path / method
    distill(_cfg(method), fmnist_teacher, out, run=quiet(data_root))
    ds = load_distilled(out, run=quiet(data_root))
    if method == "full":
        assert len(ds) == 60000 and ds.logits is None
    else:
        assert len(ds) == 20 and torch.bincount(ds.labels).tolist() == [2] * 10
        assert ds.logits.shape == (20, 1, 10)


def test_factor_two_stitches_four_patches(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "f2"
    distill(_cfg(ipc=1, factor=2), fmnist_teacher, out, run=quiet(data_root))
    ds = load_distilled(out)
    assert ds.factor == 2 and ds.logits.shape == (10, 4, 10)
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(len(e["patches"]) == 4 for e in manifest["images"])
    # patches are the 4 best crops of the class, in rank order
    norms = [p["grad_norm"] for p in manifest["images"][0]["patches"]]
    assert norms == sorted(norms, reverse=True)


def test_bad_ipc_values(fmnist_teacher, data_root, tmp_path):
    for ipc in ("0", "-3"):
        proc = run_cli(
            *fmnist_distill(fmnist_teacher),
            "--ipc",
            ipc,
            "--out",
            str(tmp_path / "x"),
        )
        assert_one_line_error(proc, "ipc")
    with pytest.raises(UserError, match="30 candidate crops .* but 31 are needed"):
        distill(_cfg(ipc=31), fmnist_teacher, tmp_path / "y", run=quiet(data_root))
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.partial").exists()


@pytest.mark.parametrize(
    "method, args, message",
    [
        ("infoutil", ["--ipc", "7"], "only 6 candidate images but 7 are needed"),
        (
            "infoutil",
            ["--ipc", "31", "--recipe", "paper", "--budget", "32"],
            "30 candidate crops (5 per image) but 31 are needed",
        ),
        ("rded", ["--ipc", "7"], "only 6 candidates but 7 are needed"),
        ("herding", ["--ipc", "7"], "only 6 candidates but 7 are needed"),
    ],
)
def test_an_ipc_the_pool_cannot_supply_is_refused_before_scoring(
    method, args, message, fmnist_teacher, tmp_path
):
    cache = tmp_path / "cache"
    proc = run_cli(
        *fmnist_distill(fmnist_teacher, "--method", method, "--candidates-per-class", "6"),
        *args,
        "--out",
        str(tmp_path / "x"),
        env={"INFOUTIL_CACHE": str(cache)},
    )
    assert_one_line_error(proc, message)
    assert not (cache / "scores").exists()  # no chunk was scored
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_a_teacher_that_does_not_fit_is_refused_before_decoding(fmnist_teacher, tmp_path):
    cache = tmp_path / "cache"
    proc = run_cli(
        "distill",
        "--dataset",
        "cifar10",
        "--teacher",
        str(fmnist_teacher),
        "--ipc",
        "1",
        "--out",
        str(tmp_path / "x"),
        env={"INFOUTIL_CACHE": str(cache)},
    )
    assert_one_line_error(proc, "reads 1-channel images but dataset cifar10 has 3 channels")
    assert not cache.exists() or not any(cache.iterdir())  # nothing was decoded
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_the_stitch_rules_on_a_tiny_case():
    from infoutil.methods.common import stitch_blocks, stitch_consecutive

    assert stitch_consecutive(3, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # RDED's mix_images: slot s of image j is rank s * ipc + j
    assert stitch_blocks(3, 4) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert stitch_blocks(2, 1) == stitch_consecutive(2, 1) == [[0], [1]]


def test_rded_at_factor_two_stitches_blocks_of_its_ranking(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "rded"
    distill(
        _cfg("rded", ipc=2, factor=2, candidates_per_class=8),
        fmnist_teacher,
        out,
        run=quiet(data_root),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stitch"] == "blocks"
    first_class = [e for e in manifest["images"] if e["class"] == 0]
    ranked = sorted(p["loss"] for e in first_class for p in e["patches"])
    for j, entry in enumerate(first_class):
        assert [p["loss"] for p in entry["patches"]] == [ranked[s * 2 + j] for s in range(4)]


def test_a_noisy_crop_equal_to_the_noise_free_one_is_marked_noise_free(
    fmnist_teacher, data_root, tmp_path
):
    out = tmp_path / "alpha0"
    cfg = _cfg(informativeness={"budget": 32, "alpha": 0.0}, utility={"per_source": "best"})
    distill(cfg, fmnist_teacher, out, run=quiet(data_root))
    manifest = json.loads((out / "manifest.json").read_text())
    patches = [p for e in manifest["images"] for p in e["patches"]]
    # without noise all five boxes coincide: the first is kept, and it is the noise-free crop
    assert all(p["crop"] == 0 and p["noise_free"] for p in patches)
    assert manifest["diagnostics"]["selected"]["overall"]["noise_free_share"] == 1.0


def test_finished_output_is_not_overwritten(distilled, fmnist_teacher):
    proc = run_cli(
        *fmnist_distill(fmnist_teacher),
        "--ipc",
        "2",
        "--out",
        str(distilled),
        "--candidates-per-class",
        "6",
    )
    assert_one_line_error(proc, "--overwrite")
    load_distilled(distilled)  # still intact


def test_a_budget_too_small_is_refused_when_the_config_is_built(fmnist_teacher, tmp_path):
    """Before any stage runs (no data is read, no progress bar is drawn)."""
    with pytest.raises(UserError, match="budget 10 is too small .* at least 18"):
        build_config(
            DistillConfig, {"dataset": "fashion-mnist", "ipc": 1, "informativeness": {"budget": 10}}
        )
    with pytest.raises(UserError, match="pool_kernel 5 is larger than the grid 4"):
        build_config(
            DistillConfig,
            {"dataset": "fashion-mnist", "ipc": 1, "informativeness": {"pool_kernel": 5}},
        )
    with pytest.raises(UserError, match="budget 8 is too small"):
        build_config(
            DistillConfig,
            {
                "dataset": "fashion-mnist",
                "ipc": 1,
                "informativeness": {"early_stop_z": 1.5, "early_stop_from": 8},
            },
        )
    proc = run_cli(
        *fmnist_distill(fmnist_teacher),
        "--ipc",
        "1",
        "--estimator",
        "permutation",
        "--budget",
        "20",
        "--out",
        str(tmp_path / "x"),
    )
    assert_one_line_error(proc, "budget 20", "at least 32")
    assert "masked forwards" not in proc.stderr


def test_rded_keeps_each_candidates_lowest_loss_crop_and_the_lowest_candidates(
    fmnist_teacher, data_root, tmp_path
):
    from infoutil.data import load_dataset
    from infoutil.data.augment import to_float
    from infoutil.io.checkpoint import load_teacher
    from infoutil.selection.crops import crop_and_resize

    out = tmp_path / "rded"
    distill(_cfg("rded"), fmnist_teacher, out, run=quiet(data_root))
    scores = load_file(str(out / "scores.safetensors"))
    manifest = json.loads((out / "manifest.json").read_text())
    losses, boxes, cand = scores["loss"], scores["boxes"], scores["candidates"]
    # the oracle: recompute every crop's cross-entropy with the teacher
    train = load_dataset("fashion-mnist", "train", str(data_root))
    model = load_teacher(fmnist_teacher).model
    images = to_float(train.get_batch(cand)).repeat_interleave(5, 0)
    crops = crop_and_resize(images, boxes.flatten(0, 1), (28, 28), "resize")
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(
            model(crops), train.targets[cand].repeat_interleave(5), reduction="none"
        ).view(-1, 5)
    assert torch.allclose(ce.double(), losses, atol=1e-4)
    best = losses.min(1).values
    for c in range(10):
        mine = torch.nonzero(scores["candidate_labels"] == c).flatten()
        lowest = mine[best[mine].argsort()[:2]]
        kept = [p for e in manifest["images"] if e["class"] == c for p in e["patches"]]
        assert sorted(p["source_index"] for p in kept) == sorted(cand[lowest].tolist())
        for p in kept:
            i = cand.tolist().index(p["source_index"])
            assert p["box"] == boxes[i, losses[i].argmin()].tolist()


def test_runs_on_other_pools_keep_their_own_chunks(tmp_path):
    """A pool of 100 a class and one of 300 share a store (the key has no pool size); each
    run's chunk 0 must survive the other's, or the study's maps are recomputed."""
    from infoutil.methods.common import ScoreStore

    store = ScoreStore(tmp_path, "shapley", {"teacher": "t"})
    small, large = torch.arange(0, 64), torch.arange(0, 128, 2)
    store.save(0, small, {"maps": torch.zeros(64, 4, 4)})
    store.save(0, large, {"maps": torch.ones(64, 4, 4)})
    assert torch.equal(store.load(0, small)["maps"], torch.zeros(64, 4, 4))
    assert torch.equal(store.load(0, large)["maps"], torch.ones(64, 4, 4))
    assert store.load(0, torch.arange(1, 65)) is None  # candidates never scored
    assert store.load(0, small, fields=("maps", "forwards")) is None  # a field it lacks
