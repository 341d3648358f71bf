"""The validation split: seeded, recorded, and never reached by any method or teacher."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infoutil.config import PROTOCOLS, DistillConfig, TeacherConfig
from infoutil.data import ValidationSplit, load_dataset, split_train_val
from infoutil.errors import UserError
from infoutil.evaluation.run import evaluate
from infoutil.methods import distill
from infoutil.training.teacher import train_teacher
from tests.helpers import assert_one_line_error, fmnist_distill, quiet, run_cli, small_config

VAL = ValidationSplit(30, 1)


@pytest.fixture(scope="module")
def parts(data_root):
    whole = load_dataset("fashion-mnist", "train", str(data_root))
    train = load_dataset("fashion-mnist", "train", str(data_root), validation=VAL)
    val = load_dataset("fashion-mnist", "val", str(data_root), validation=VAL)
    return whole, train, val


def test_the_split_is_seeded_balanced_and_disjoint(parts):
    whole, train, val = parts
    assert len(val) == 300 and torch.bincount(val.targets).tolist() == [30] * 10
    assert len(train) + len(val) == len(whole) == 60000
    ids_train = {train.source_id(i) for i in range(len(train))}
    ids_val = {val.source_id(i) for i in range(len(val))}
    assert not ids_train & ids_val and len(ids_train | ids_val) == 60000
    assert val.validation == train.validation == VAL.describe(whole)
    other = ValidationSplit(30, 2).indices(whole.targets, 10)
    assert not torch.equal(other, VAL.indices(whole.targets, 10))  # the seed matters
    assert torch.equal(VAL.indices(whole.targets, 10), VAL.indices(whole.targets, 10))


def test_a_split_that_leaves_a_class_empty_is_refused(parts):
    whole, _, _ = parts
    with pytest.raises(UserError, match="would leave none to train on"):
        split_train_val(whole, ValidationSplit(6000))
    with pytest.raises(UserError, match="needs a validation split"):
        load_dataset("fashion-mnist", "val")


@pytest.mark.parametrize("method", ["infoutil", "rded", "random", "herding", "kcenter"])
def test_no_image_of_the_split_reaches_a_pool_or_a_set(
    method, parts, fmnist_teacher, data_root, tmp_path
):
    whole, train, val = parts
    cfg = small_config(
        method,
        candidates_per_class=40,
        val_per_class=VAL.per_class,
        val_seed=VAL.seed,
        informativeness={"budget": 32, "alpha": 0.0},
    )
    out = distill(cfg, fmnist_teacher, tmp_path / method, run=quiet(data_root))
    held_out = {val.source_id(i) for i in range(len(val))}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"] == VAL.describe(whole)
    assert manifest["teachers_saw_validation"] == {"teacher": True, "label_teacher": True}
    used = {p["source_id"] for e in manifest["images"] for p in e["patches"]}
    if (out / "scores.safetensors").is_file():
        pool = load_file(str(out / "scores.safetensors"))["candidates"]
        used |= {train.source_id(int(i)) for i in pool}
        assert len(pool) == 400
    assert used and not used & held_out


def test_full_and_evaluation_on_the_split(fmnist_teacher, data_root, tmp_path, parts):
    _, train, val = parts
    cfg = DistillConfig(method="full", dataset="fashion-mnist", ipc=1, val_per_class=30, val_seed=1)
    full = distill(cfg, fmnist_teacher, tmp_path / "full", run=quiet(data_root))
    from infoutil.io.distilled import load_distilled

    assert len(load_distilled(full, run=quiet(data_root))) == len(train) == 59700
    small = DistillConfig(
        method="random", dataset="fashion-mnist", ipc=2, val_per_class=30, val_seed=1
    )
    sset = distill(small, fmnist_teacher, tmp_path / "r", run=quiet(data_root))
    protocol = PROTOCOLS["rded"].model_copy(update={"epochs": 2, "eval_points": 1})

    def run(out: str, **kw):
        kw = {"protocol": protocol, "run": quiet(data_root), **kw}
        return evaluate(sset, tmp_path / out, **kw)

    res = run("e", split="val")
    assert res["split"] == "val" and res["test_images"] == len(val) == 300
    assert res["validation"] == val.validation
    test = run("t")
    assert test["split"] == "test" and test["test_images"] == 10000 and test["validation"] is None
    assert res["held_out"] == test["held_out"] == val.validation  # the set never saw it
    # the student that was measured on val, measured on test: the same number as training it
    # again for the test set, without the training
    reused = run("t2", students_from=tmp_path / "e")
    assert reused["accuracy"] == test["accuracy"]
    last = reused["curves"][0]["curve"][-1]
    assert last["student_from"] == str(tmp_path / "e") and "probe_accuracy" not in last
    assert [p["train_loss"] for p in reused["curves"][0]["curve"]] == [
        p["train_loss"] for p in test["curves"][0]["curve"]
    ]
    # another training (one epoch, not two) does not match the kept student: it trains
    other = run(
        "t3", protocol=protocol.model_copy(update={"epochs": 1}), students_from=tmp_path / "e"
    )
    assert "student_from" not in other["curves"][0]["curve"][-1]
    missing = str(tmp_path / "nowhere")
    proc = run_cli("evaluate", str(sset), "--out", str(tmp_path / "t4"), "--students-from", missing)
    assert_one_line_error(proc, "--students-from", "nowhere")


def test_val_on_a_set_without_a_split_is_refused(fmnist_teacher, data_root, tmp_path):
    cfg = DistillConfig(method="random", dataset="fashion-mnist", ipc=1)
    out = distill(cfg, fmnist_teacher, tmp_path / "r", run=quiet(data_root))
    proc = run_cli("evaluate", str(out), "--out", str(tmp_path / "e"), "--split", "val")
    assert_one_line_error(proc, "without a validation split", "--val-per-class")
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


def test_a_teacher_trained_without_the_split_records_it(data_root, tmp_path):
    cfg = TeacherConfig(
        dataset="fashion-mnist",
        epochs=1,
        train_per_class=5,
        test_per_class=5,
        val_per_class=30,
        val_seed=1,
    )
    meta = train_teacher(cfg, tmp_path / "t", run=quiet(data_root))
    assert (
        meta["validation"]["sha256"]
        == VAL.describe(load_dataset("fashion-mnist", "train", str(data_root)))["sha256"]
    )
    out = tmp_path / "d"
    proc = run_cli(
        *fmnist_distill(tmp_path / "t", "--method", "random", "--ipc", "1", "--out", str(out)),
        "--val-per-class",
        "30",
        "--val-seed",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((out / "manifest.json").read_text())["teachers_saw_validation"]
    assert seen == {"teacher": False, "label_teacher": False}
