"""Every named option of InfoUtil runs through ``distill`` and does what its name says."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infoutil.config import RECIPES
from infoutil.methods import distill
from tests.helpers import quiet, small_config


@pytest.fixture(scope="module")
def run(fmnist_teacher, data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    done = {}

    def go(name, **options):
        if name not in done:
            out = root / name
            distill(
                small_config(**options),
                fmnist_teacher,
                out,
                run=quiet(data_root),
            )
            manifest = json.loads((out / "manifest.json").read_text())
            manifest["run_stats"] = json.loads((out / "run_stats.json").read_text())
            scores = out / "scores.safetensors"  # random scores nothing
            done[name] = (manifest, load_file(str(scores)) if scores.is_file() else {})
        return done[name]

    return go


def _selected_norms(scores, c):
    cls = scores["candidate_labels"][:, None].expand_as(scores["grad_norm"])
    return scores["grad_norm"][(cls == c) & scores["selected"]]


def test_the_window_and_grid(run):
    _, base = run("base")
    assert (base["boxes"][..., 2:] == 14).all()  # kernel 2 of a 4x4 grid: half of each side
    _, k3 = run("k3", informativeness={"budget": 32, "pool_kernel": 3})
    assert (k3["boxes"][..., 2:] == 21).all() and k3["pooled"].shape[1:] == (2, 2)
    _, g2 = run("grid2", informativeness={"budget": 32, "grid": 2, "pool_kernel": 1})
    assert g2["shapley"].shape[1:] == (2, 2) and (g2["boxes"][..., 2:] == 14).all()
    m, f2 = run("factor2", factor=2, ipc=1)
    assert m["factor"] == 2 and all(len(e["patches"]) == 4 for e in m["images"])


def test_precision_dedupe_crop_input_and_grad_norm(run):
    _, base = run("base")
    _, bf16 = run("bf16", informativeness={"budget": 32, "precision": "bf16"})
    rel = (bf16["shapley"] - base["shapley"]).norm() / base["shapley"].norm()
    assert 0 < float(rel) < 0.2  # bf16 forwards: other values, the same picture
    _, nodedupe = run("nodedupe", informativeness={"budget": 32, "dedupe": False})
    assert base["grad_norm"].isnan().any() and not nodedupe["grad_norm"].isnan().any()
    _, pad = run("pad", utility={"crop_input": "pad"})
    assert not torch.allclose(pad["grad_norm"].nan_to_num(), base["grad_norm"].nan_to_num())
    _, last = run("last", utility={"grad_norm": "last_layer"})
    both = ~base["grad_norm"].isnan()
    assert (last["grad_norm"][both] < base["grad_norm"][both]).all()  # a part of the whole


def test_compiled_masked_forwards(run):
    m, base = run("base")
    mc, compiled = run("compiled", informativeness={"budget": 32, "compile": True})
    rel = (compiled["shapley"] - base["shapley"]).norm() / base["shapley"].norm()
    # the same fp32 forwards, fused: the last bits differ, and Shapley values, differences of
    # near-equal outputs, grow that to about 1e-3 here (bf16: up to 0.2); not the eager maps'
    # cache entry (the key names the compile)
    assert 0 < float(rel) < 1e-2
    assert mc["config"]["informativeness"]["compile"]
    assert not m["config"]["informativeness"]["compile"]


@pytest.mark.parametrize(
    "rule", ["lowest", "highest_correct", "quantile", "strata", "badge", "cluster"]
)
def test_each_utility_rule(rule, run):
    manifest, scores = run(rule, utility={"select": rule})
    _, base = run("base")
    assert torch.equal(scores["grad_norm"].nan_to_num(), base["grad_norm"].nan_to_num())
    assert int(scores["selected"].sum()) == 20
    for c in range(10):
        mine = scores["grad_norm"][scores["candidate_labels"] == c].flatten()
        mine = mine[~mine.isnan()]
        picked = _selected_norms(scores, c)
        if rule == "lowest":
            assert set(picked.tolist()) == set(mine.sort().values[:2].tolist())
        if rule == "highest_correct":
            cls = scores["candidate_labels"][:, None].expand_as(scores["grad_norm"])
            sel = (cls == c) & scores["selected"]
            right = (scores["teacher_pred"] == c) & (cls == c) & ~scores["grad_norm"].isnan()
            if int(right.sum()) >= 2:
                assert (scores["teacher_pred"][sel] == c).all()
    assert manifest["config"]["utility"]["select"] == rule


def test_one_crop_per_source_and_the_paper_recipe(run):
    manifest, _ = run("best", utility={"per_source": "best"})
    sel = manifest["diagnostics"]["selected"]["overall"]
    assert sel["distinct_sources"] == sel["patches"] == 20
    paper, _ = run("paper", recipe="paper")
    for section, values in RECIPES["paper"].items():
        for key, value in values.items():
            assert paper["config"][section][key] == value


def test_attribution_controls(run):
    _, gradcam = run("gradcam", informativeness={"budget": 32, "attribution": "gradcam"})
    assert "gradcam" in gradcam and "shapley" not in gradcam
    _, rand = run("random", informativeness={"budget": 32, "attribution": "random"})
    _, again = run("random-again", informativeness={"budget": 32, "attribution": "random"})
    assert torch.equal(rand["random"], again["random"])  # seeded per candidate
    _, base = run("base")
    assert not torch.equal(rand["boxes"], base["boxes"])


def test_rded_crops_as_the_crop_position(run):
    """attribution=rded: no map; the candidates' crops are RDED's own random squares (the
    boxes the rded method draws for the same pool and seed), scored by our utility rule."""
    manifest, ours = run("rded-crops", factor=2, ipc=1, informativeness={"attribution": "rded"})
    _, theirs = run("rded-method", method="rded", factor=2, ipc=1)
    assert "shapley" not in ours and "pooled" not in ours
    assert torch.equal(ours["candidates"], theirs["candidates"])
    assert torch.equal(ours["boxes"], theirs["boxes"])  # 5 random squares a candidate
    for image in manifest["images"]:
        for patch in image["patches"]:
            row = int((ours["candidates"] == patch["source_index"]).nonzero())
            assert patch["box"] in ours["boxes"][row].tolist()


def test_random_windows_stitch_random_real_crops(run):
    manifest, _ = run("random-windows", method="random", factor=2, ipc=1,
                      random={"patches": "windows"})  # fmt: skip
    patches = [p for image in manifest["images"] for p in image["patches"]]
    assert len(patches) == 4 * 10 and len({p["source_index"] for p in patches}) == 40
    assert all(p["box"][2:] == [14, 14] for p in patches)  # native quarters of 28 px
    assert len({tuple(p["box"][:2]) for p in patches}) > 1  # at random positions
    whole, _ = run("random-whole", method="random", factor=2, ipc=1)
    assert all(len(image["patches"]) == 1 for image in whole["images"])


def test_the_gradient_norm_at_an_earlier_checkpoint(run, fmnist_teacher):
    _, base = run("base")  # the last epoch (2) of the teacher's run
    manifest, early = run("early", utility={"teacher_epoch": 1})
    assert torch.equal(early["boxes"], base["boxes"])  # the crops come from the same maps
    assert not torch.allclose(early["grad_norm"].nan_to_num(), base["grad_norm"].nan_to_num())
    assert manifest["teacher"]["epoch"] == 2  # the judge is still the scoring checkpoint


def test_a_shortlist_maps_only_the_candidates_the_rule_prefers_whole(run):
    manifest, short = run(
        "shortlist", informativeness={"budget": 32, "shortlist": 1.5}, utility={"select": "lowest"}
    )
    _, full = run("lowest", utility={"select": "lowest"})
    # 3 of 6 candidates a class (1.5 x IPC 2): the maps are the full pool's for those
    assert short["shapley"].shape[0] == 30 and full["shapley"].shape[0] == 60
    rows = [full["candidates"].tolist().index(i) for i in short["candidates"].tolist()]
    assert torch.equal(short["shapley"], full["shapley"][rows])
    assert manifest["config"]["informativeness"]["shortlist"] == 1.5


def test_the_speed_routes_are_opt_in_and_the_early_stop_applies_where_it_can():
    from infoutil.config import DistillConfig

    default = DistillConfig(dataset="cifar10", ipc=10).informativeness
    assert default.shortlist is None and not default.stops_early and default.precision == "fp32"
    on = {"early_stop_z": 1.5}
    assert DistillConfig(dataset="cifar10", ipc=10, informativeness=on).informativeness.stops_early
    paper = DistillConfig(dataset="cifar10", ipc=10, recipe="paper").informativeness
    assert paper.shortlist is None and not paper.stops_early
    # only leverage-gp has the error bound; per-image noise lets a candidate decide alone
    for other in ({"estimator": "leverage"}, {"noise_std": "global"}, {"budget": 128}):
        cfg = DistillConfig(dataset="cifar10", ipc=10, informativeness={**on, **other})
        assert not cfg.informativeness.stops_early


def test_an_early_stop_costs_fewer_forwards_and_keeps_the_window(run):
    """At factor 2 (quarter windows) the maps stop between 32 and 64 evaluations."""
    options = dict(factor=2, ipc=1, candidates_per_class=4)
    inf = {"budget": 64, "early_stop_z": 2.0, "early_stop_from": 32}
    manifest, early = run("early-stop", **options, informativeness=inf)
    _, plain = run("factor2-small", **options, informativeness={"budget": 64})
    forwards = {s["stage"]: s["teacher_forwards"] for s in manifest["run_stats"]["stages"]}
    assert 40 * 32 <= forwards["shapley"] < 40 * 64
    assert (early["boxes"][..., 2:] == 14).all()
    # a map that ran the whole budget is the plain map
    same = (early["shapley"] == plain["shapley"]).flatten(1).all(1)
    assert 0 < int(same.sum()) < 40


def test_a_whole_image_window_computes_no_map(run):
    manifest, scores = run("k4", informativeness={"budget": 32, "pool_kernel": 4})
    assert "shapley" not in scores and "pooled" not in scores
    assert (scores["boxes"] == torch.tensor([0, 0, 28, 28])).all()
    patch = manifest["images"][0]["patches"][0]
    assert "shapley_map" not in patch and patch["noise_free"]


def test_whole_image_scores_are_reused_whatever_the_map_settings(run):
    _, whole = run("k4", informativeness={"budget": 32, "pool_kernel": 4})
    manifest, other = run("k4-budget64", informativeness={"budget": 64, "pool_kernel": 4})
    utility = next(s for s in manifest["run_stats"]["stages"] if s["stage"] == "utility")
    assert utility["teacher_forwards"] == 0  # every chunk came from the first run's store
    assert torch.equal(other["grad_norm"].nan_to_num(), whole["grad_norm"].nan_to_num())


def test_a_shortlist_is_skipped_where_no_map_is_computed(run):
    _, whole = run("k4", informativeness={"budget": 32, "pool_kernel": 4})
    _, short = run("k4-shortlist", informativeness={"budget": 32, "pool_kernel": 4, "shortlist": 1})
    assert torch.equal(short["candidates"], whole["candidates"])
    assert torch.equal(short["selected"], whole["selected"])


def test_the_patch_sized_window_follows_the_factor(run):
    _, one = run("patch1", informativeness={"budget": 32, "pool_kernel": None})
    assert (one["boxes"] == torch.tensor([0, 0, 28, 28])).all()  # factor 1: the whole image
    m, two = run("patch2", factor=2, ipc=1, informativeness={"budget": 32, "pool_kernel": None})
    assert (two["boxes"][..., 2:] == 14).all() and "shapley" in two  # a native quarter
    assert all(p["box"][2:] == [14, 14] for e in m["images"] for p in e["patches"])


def test_the_default_recipe_is_the_studys_leader(run):
    """Whole images (no map), one per source, the easiest image of each feature group."""
    manifest, scores = run("default", recipe="default")
    cfg = manifest["config"]
    assert cfg["informativeness"]["pool_kernel"] is None
    assert (cfg["utility"]["select"], cfg["utility"]["per_source"]) == ("cluster", "best")
    assert "shapley" not in scores and (scores["boxes"] == torch.tensor([0, 0, 28, 28])).all()
    sel = manifest["diagnostics"]["selected"]["overall"]
    assert sel["distinct_sources"] == sel["patches"] == 20 and sel["mean_area"] == 1.0
    # the cluster rule's features: one forward per distinct crop, one (whole) crop per candidate
    stages = {s["stage"]: s["teacher_forwards"] for s in manifest["run_stats"]["stages"]}
    assert stages["selection rule"] == len(scores["candidates"])
    # the same set as the study's variant spelled out on the paper's recipe
    spelled, again = run(
        "k4-cluster-best",
        informativeness={"budget": 32, "pool_kernel": 4},
        utility={"select": "cluster", "per_source": "best"},
    )
    assert torch.equal(scores["selected"], again["selected"])
    assert [e["patches"][0]["source_index"] for e in manifest["images"]] == [
        e["patches"][0]["source_index"] for e in spelled["images"]
    ]


def test_the_default_keeps_whole_images_at_every_resolution_and_rded_stitches():
    """The ImageWoof study (128 px) moved InfoUtil's default to factor 1 everywhere; rded, the
    baselines and the paper's recipe keep RDED's rule (2 above 64 px), and --factor wins."""
    from infoutil.config import DistillConfig

    woof = {"dataset": "imagewoof", "ipc": 10}
    assert DistillConfig(**woof).factor == 1
    assert DistillConfig(**woof, recipe="paper").factor is None
    assert DistillConfig(**woof, factor=2).factor == 2
    for method in ("rded", "random", "herding", "kcenter"):
        assert DistillConfig(**woof, method=method).factor is None


FASTSHAP = {"attribution": "fastshap", "fastshap": {"images_per_class": 3, "coalitions": 8}}


def test_fastshap_trains_on_part_of_the_pool_and_maps_every_candidate(run):
    manifest, fast = run(
        "fastshap", informativeness={**FASTSHAP, "fastshap": {**FASTSHAP["fastshap"], "epochs": 2}}
    )
    assert "fastshap" in fast and "shapley" not in fast
    assert fast["fastshap"].shape == (60, 4, 4) and torch.isfinite(fast["fastshap"]).all()
    stages = {s["stage"]: s["teacher_forwards"] for s in manifest["run_stats"]["stages"]}
    # 3 candidates a class, 8 coalitions and both ends each; then 3 forwards per candidate
    assert stages["fastshap evaluations"] == 10 * 3 * (8 + 2)
    assert stages["fastshap"] == 60 * 3 and "fastshap explainer" in stages
    _, base = run("base")
    assert not torch.equal(fast["boxes"], base["boxes"])


def test_a_second_fastshap_run_reuses_the_trained_explainer(fmnist_teacher, data_root, tmp_path):
    runs = []
    for name in ("first", "second"):
        cfg = small_config(
            informativeness={**FASTSHAP, "fastshap": {**FASTSHAP["fastshap"], "epochs": 3}}
        )
        distill(cfg, fmnist_teacher, tmp_path / name, run=quiet(data_root))
        stats = json.loads((tmp_path / name / "run_stats.json").read_text())
        runs.append(
            (
                [s["stage"] for s in stats["stages"]],
                load_file(str(tmp_path / name / "scores.safetensors")),
            )
        )
    assert "fastshap explainer" in runs[0][0] and "fastshap explainer" not in runs[1][0]
    assert torch.equal(runs[0][1]["fastshap"], runs[1][1]["fastshap"])


def test_fastshap_refuses_unpaired_coalitions():
    from infoutil.config import DistillConfig
    from infoutil.errors import UserError

    with pytest.raises(UserError, match="even"):
        DistillConfig(dataset="cifar10", ipc=1, informativeness={"fastshap": {"coalitions": 7}})


def test_every_study_variant_is_a_valid_config():
    """benchmarks/study.py's variants (the high-resolution controls among them) are configs
    that distill accepts, with and without a map engine."""
    import importlib.util
    from pathlib import Path

    from infoutil.config import DistillConfig

    path = Path(__file__).parents[1] / "benchmarks" / "study.py"
    spec = importlib.util.spec_from_file_location("study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    engine = {"precision": "bf16", "compile": True}
    for name, (method, options) in study.VARIANTS.items():
        for opts in (options, study.with_map_engine(method, options, engine)):
            cfg = DistillConfig(method=method, dataset="imagewoof", ipc=10, **opts)
            assert cfg.method == method, name
    rded_crop = DistillConfig(dataset="imagewoof", ipc=1, **study.VARIANTS["default-rded-crop"][1])
    assert rded_crop.informativeness.attribution == "rded"
    assert rded_crop.utility.select == "cluster"  # the default's rule, only the crops differ
    # the controls vary the default as the study found it (factor 2, Shapley), not today's
    old = DistillConfig(dataset="imagewoof", ipc=1, **study.VARIANTS["default-f2"][1])
    assert (old.factor, old.informativeness.attribution) == (2, "shapley")
    assert rded_crop.factor == 2 and DistillConfig(dataset="imagewoof", ipc=1).factor == 1
    # at 128 px today's default is the study's default-f1 set, so its students give the grid
    f1 = DistillConfig(dataset="imagewoof", ipc=10, **study.VARIANTS["default-f1"][1])
    assert f1.model_dump() == DistillConfig(dataset="imagewoof", ipc=10).model_dump()


def test_the_forward_batch_keeps_a_forward_near_half_a_gigabyte():
    from types import SimpleNamespace

    from infoutil.methods.common import MethodContext

    def batch(size, configured=None):
        mc = SimpleNamespace(
            cfg=SimpleNamespace(forward_batch_size=configured),
            train=SimpleNamespace(info=SimpleNamespace(image_size=size)),
        )
        return MethodContext.forward_batch.fget(mc)

    assert [batch(s) for s in (28, 32, 64, 128, 224)] == [512, 512, 128, 32, 16]
    assert batch(128, configured=256) == 256  # a config's value wins
