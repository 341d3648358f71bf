"""Selection diagnostics: what the judge teacher thinks of the kept patches, per method."""

from __future__ import annotations

import json

import pytest
import torch

from infoutil.data import ValidationSplit, load_dataset
from infoutil.data.augment import to_float
from infoutil.io.checkpoint import load_teacher
from infoutil.methods import distill
from infoutil.methods.common import candidate_pool
from infoutil.selection.crops import crop_and_resize
from infoutil.selection.diagnostics import selection_diagnostics, warning
from infoutil.selection.probe import probe_sample, quarter_boxes, quarter_probe
from infoutil.selection.scored import ScoredPatches
from tests.helpers import fmnist_distill, quiet, run_cli, small_config

VAL = ValidationSplit(40, 3)


def _distill(method, teacher, out, data_root):
    cfg = small_config(method, val_per_class=VAL.per_class, val_seed=VAL.seed)
    distill(cfg, teacher, out, run=quiet(data_root))
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["infoutil", "rded", "random", "herding"])
def test_diagnostics_equal_a_recomputation_from_the_saved_patches(
    method, fmnist_teacher, data_root, tmp_path
):
    manifest = _distill(method, fmnist_teacher, tmp_path / method, data_root)
    diag = manifest["diagnostics"]
    assert json.loads((tmp_path / method / "run_stats.json").read_text())["diagnostics"] == diag
    train = load_dataset("fashion-mnist", "train", str(data_root), validation=VAL)
    model = load_teacher(fmnist_teacher).model
    patches = [p for entry in manifest["images"] for p in entry["patches"]]
    src = torch.tensor([p["source_index"] for p in patches])
    boxes = torch.tensor([p["box"] for p in patches])
    labels = train.targets[src]
    # every method scores a patch resized to the input size (rded at factor 1 too)
    x = crop_and_resize(to_float(train.get_batch(src)), boxes, (28, 28), "resize")
    with torch.inference_mode():
        logits = model(x)
    direct = ScoredPatches.from_logits(src, labels, boxes, logits)
    sel = diag["selected"]["overall"]
    assert sel["patches"] == len(patches) == 20
    assert sel["teacher_top1"] == round(float((direct.pred == labels).double().mean()), 4)
    assert sel["mean_true_class_prob"] == pytest.approx(float(direct.prob.mean()), abs=2e-4)
    assert sel["predicted"] == torch.bincount(direct.pred, minlength=10).tolist()
    assert sel["distinct_sources"] == len(set(src.tolist()))
    area = (boxes[:, 2] * boxes[:, 3]).double() / 28**2
    assert sel["mean_area"] == pytest.approx(float(area.mean()), abs=1e-4)
    names = diag["class_names"]
    for c, name in enumerate(names):
        mine = labels == c
        per_class = diag["selected"]["per_class"][name]
        assert per_class["patches"] == int(mine.sum())
        # per class, only the classes predicted at all, by name (not classes squared)
        counts = torch.bincount(direct.pred[mine], minlength=10)
        assert per_class["predicted"] == {names[k]: int(counts[k]) for k in range(10) if counts[k]}
    if method == "infoutil":
        noise_free = sum(p["noise_free"] for p in patches) / len(patches)
        assert sel["noise_free_share"] == pytest.approx(noise_free, abs=1e-4)
        _check_quarter_probe(diag["quarter_probe"], train, model)
    else:
        assert "quarter_probe" not in diag
    pool = diag["pool"]["overall"]
    assert pool["patches"] >= sel["patches"]
    if method in ("random", "herding"):
        assert pool["patches"] == 60 and sel["mean_area"] == 1.0  # the pool, whole images


def _check_quarter_probe(probe: dict, train, model) -> None:
    """The recorded probe is the teacher on one quarter of each of the 6 candidates a class
    (the whole pool, under 500), recomputed here crop by crop."""
    cfg = small_config()
    candidates = candidate_pool(train, cfg.candidates_per_class, cfg.seed)
    assert probe["images"] == len(candidates) == 60
    labels = train.targets[candidates]
    x = to_float(train.get_batch(candidates))
    boxes = quarter_boxes(candidates, 28, cfg.seed)
    assert (boxes[:, 2:] == 14).all() and len(set(map(tuple, boxes.tolist()))) > 10
    with torch.inference_mode():
        whole = model(x).argmax(1) == labels
        quarter = model(crop_and_resize(x, boxes, (28, 28), "resize")).argmax(1) == labels
    assert probe["whole_top1"] == round(float(whole.double().mean()), 4)
    assert probe["quarter_top1"] == round(float(quarter.double().mean()), 4)
    assert probe["quarter_top1"] < probe["whole_top1"]


def test_the_utility_stage_counts_one_forward_a_distinct_crop(fmnist_teacher, data_root, tmp_path):
    """The default's window is the whole image, so a candidate's five crops are one: one
    forward each (the summary's teacher forwards once counted five)."""
    cfg = small_config(recipe="default", val_per_class=VAL.per_class, val_seed=VAL.seed)
    run = quiet(data_root, cache_dir=str(tmp_path / "cache"))  # every score computed here
    distill(cfg, fmnist_teacher, tmp_path / "set", run=run)
    stages = json.loads((tmp_path / "set" / "run_stats.json").read_text())["stages"]
    forwards = {s["stage"]: s["teacher_forwards"] for s in stages}
    assert forwards["utility"] == 60  # 6 candidates a class, one distinct crop each
    assert forwards["quarter probe"] == 2 * 60  # the whole pool is under 500: every candidate


class _Brightness(torch.nn.Module):
    """Class 1 where the mean pixel exceeds 0.1, else class 0."""

    def forward(self, x):
        bright = (x.mean((1, 2, 3)) > 0.1).float()
        return torch.stack([1 - bright, bright], 1)


def test_the_quarter_probe_counts_what_a_quarter_shows():
    """Class 1 is a white top-left quadrant on black (a quarter of the area): whole images are
    always read right, and a quarter window only where it overlaps the white enough."""
    size, n = 16, 40
    labels = torch.arange(n) % 2
    images = torch.zeros((n, 1, size, size))
    images[labels == 1, :, :8, :8] = 1.0
    probe = quarter_probe(_Brightness(), lambda idx: images[idx], torch.arange(n), labels,
                          num_classes=2, seed=3, batch_size=7)  # fmt: skip
    boxes = quarter_boxes(torch.arange(n), size, 3)
    overlap = (8 - boxes[:, 0]) * (8 - boxes[:, 1]) / 64  # the white share of each window
    expected = torch.where(labels == 1, overlap > 0.1, torch.ones(n, dtype=torch.bool))
    assert probe["images"] == n and probe["whole_top1"] == 1.0
    assert probe["quarter_top1"] == round(float(expected.double().mean()), 4) < 1.0
    assert quarter_boxes(torch.arange(n), size, 3).equal(boxes)
    assert not quarter_boxes(torch.arange(n), size, 4).equal(boxes)
    assert probe_sample(labels, 2, 7).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # 4 a class
    few = quarter_probe(_Brightness(), lambda idx: images[idx], torch.arange(n), labels,
                        num_classes=2, seed=3, total=8)  # fmt: skip
    assert few["images"] == 8


def _fake(top1: float, n: int = 10) -> dict:
    right = int(round(top1 * n))
    label = torch.zeros(n, dtype=torch.int64)
    pred = torch.tensor([0] * right + [1] * (n - right))
    p = ScoredPatches(
        torch.arange(n), label, torch.tensor([[0, 0, 4, 4]] * n), torch.full((n,), 0.5), pred
    )
    return selection_diagnostics(p, p, ("a", "b"), 8)


def test_the_warning_fires_below_half_and_stays_silent_above():
    assert warning(_fake(0.3)) is not None and "30%" in warning(_fake(0.3))
    assert warning(_fake(0.5)) is None and warning(_fake(0.9)) is None


def _diag(selected: float, pool: float, area: float) -> dict:
    overall = {"patches": 10, "teacher_top1": selected, "mean_area": area}
    return {"selected": {"overall": overall}, "pool": {"overall": {"teacher_top1": pool}}}


def test_the_warning_names_the_likely_cause():
    """A weak teacher at factor 1 is blamed on the teacher, not on a crop that is the whole
    image (the case a user met: a 15.5% teacher); small crops and hard-keeping rules apart."""
    weak = warning(_diag(0.16, 0.17, 1.0), teacher_accuracy=0.155, rule="cluster")
    assert "the teacher itself reads only 17% of the candidate pool (15.5% on its test set)" in weak
    assert "crop" not in weak and "\n" not in weak
    small = warning(_diag(0.3, 0.8, 0.25))
    assert "cover 25% of the image" in small and "too small" in small
    hard = warning(_diag(0.3, 0.8, 1.0), rule="highest")
    assert "the 'highest' rule keeps whole images the teacher finds hard" in hard


def test_the_distill_warns_when_the_teacher_gets_most_selected_patches_wrong(
    fmnist_teacher, tmp_path
):
    common = ["--ipc", "2", "--candidates-per-class", "6", "-q"]
    paper = run_cli(
        *fmnist_distill(fmnist_teacher, *common, "--budget", "32", "--recipe", "paper", "--out",
                        str(tmp_path / "p"))
    )  # fmt: skip
    assert paper.returncode == 0, paper.stderr
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    top1 = manifest["diagnostics"]["selected"]["overall"]["teacher_top1"]
    assert top1 < 0.5  # the highest gradient norms are the crops the teacher gets wrong
    assert "teacher on selected patches: top-1" in paper.stdout
    assert paper.stderr.count("warning: the teacher classifies only") == 1
    rded = run_cli(
        *fmnist_distill(fmnist_teacher, *common, "--method", "rded", "--out", str(tmp_path / "r"))
    )
    assert rded.returncode == 0 and "teacher on selected patches" in rded.stdout
    top1 = json.loads((tmp_path / "r" / "manifest.json").read_text())["diagnostics"]
    assert top1["selected"]["overall"]["teacher_top1"] >= 0.5
    assert "warning" not in rded.stderr
