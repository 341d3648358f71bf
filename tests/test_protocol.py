"""The student protocol's pieces, each checked for what it does, and the stored labels."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from infoutil.config import PROTOCOLS
from infoutil.data import load_dataset, per_class_sample, subset
from infoutil.data.augment import cutmix, horizontal_flip, random_resized_crop, shuffle_patches
from infoutil.evaluation.run import evaluate
from infoutil.evaluation.student import soft_targets_static, train_student
from infoutil.io.checkpoint import load_teacher
from infoutil.io.distilled import load_distilled
from infoutil.methods import distill
from infoutil.training.teacher import cosine_lr
from tests.helpers import assert_one_line_error, fmnist_distill, quiet, run_cli, small_config


def _quadrants(b: int = 6) -> torch.Tensor:
    """Images whose four 4x4 quadrants hold the values 1, 2, 3, 4."""
    x = torch.zeros(b, 1, 8, 8)
    for v, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)], 1):
        x[:, :, r : r + 4, c : c + 4] = v
    return x


def test_shuffle_patches_permutes_whole_patches():
    x = _quadrants()
    out = shuffle_patches(x, 2, torch.Generator().manual_seed(0))
    for img in out:
        quads = [img[0, r : r + 4, c : c + 4] for r in (0, 4) for c in (0, 4)]
        assert all(q.unique().numel() == 1 for q in quads)  # patches move whole
        assert sorted(float(q[0, 0]) for q in quads) == [1, 2, 3, 4]
    assert not torch.equal(out, x)  # some image was rearranged
    assert torch.equal(shuffle_patches(x, 1, torch.Generator()), x)


def test_random_resized_crop_zooms_within_its_scale():
    x = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 1, 32, 32).contiguous()
    out = random_resized_crop(x, torch.Generator().manual_seed(1), scale=(0.5, 1.0))
    assert out.shape == x.shape and not torch.equal(out, x)
    # a crop of at least half the area keeps the gradient's direction and most of its range
    assert (out[:, 0, 0, -1] > out[:, 0, 0, 0]).all()
    assert torch.equal(random_resized_crop(x, torch.Generator(), scale=(1.0, 1.0)), x)


def test_cutmix_pastes_one_box_from_the_permuted_batch():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous()
    mixed, perm, kept = cutmix(x, torch.Generator().manual_seed(3))
    for i in range(4):
        pasted = mixed[i] != x[i]
        if perm[i] != i:
            assert (mixed[i][pasted] == perm[i].float()).all()
        frac = float(pasted.float().mean()) if perm[i] != i else 1 - kept
        assert frac == pytest.approx(1 - kept, abs=1e-6)


def test_flip_mirrors_the_chosen_images():
    x = torch.rand(8, 1, 4, 4)
    out = horizontal_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, x, strict=True)]
    assert any(flipped) and not all(flipped)
    assert all(torch.equal(o, i) or f for o, i, f in zip(out, x, flipped, strict=True))
    assert torch.equal(horizontal_flip(x, torch.Generator(), p=1.0), x.flip(-1))


def test_lr_floor_and_temperature():
    assert cosine_lr(1e-3, 0, 10) == 1e-3
    assert cosine_lr(1e-3, 10, 10) == pytest.approx(0.0)
    assert cosine_lr(1e-3, 10, 10, floor=0.5) == pytest.approx(5e-4)  # RDED's schedule
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 4.0, 0.0]]])
    sharp, soft = soft_targets_static(logits, 1.0), soft_targets_static(logits, 20.0)
    assert sharp[0, 0] > 0.9 and 0.34 < soft[0, 0] < 0.4  # T = 20 is nearly uniform


@pytest.fixture(scope="module")
def small_set(fmnist_teacher, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("set") / "random"
    distill(small_config("random"), fmnist_teacher, out, run=quiet(data_root))
    return load_distilled(out)


def test_the_static_protocol_trains_on_the_stored_labels(small_set, data_root):
    """Stored labels that name the next class teach the student the next class."""
    shifted = (small_set.labels + 1) % 10
    logits = 10.0 * torch.nn.functional.one_hot(shifted, 10).float()[:, None, :]
    fake = dataclasses.replace(small_set, logits=logits)
    test = load_dataset("fashion-mnist", "test", str(data_root))
    test = subset(test, per_class_sample(test.targets, 10, 3, 0))
    proto = PROTOCOLS["static"].model_copy(
        update={"epochs": 40, "eval_points": 1, "temperature": 1.0, "cutmix": False}
    )
    run = train_student(fake, test, None, "convnet3", proto, 0, progress_bar=False)
    with torch.no_grad():
        predicted = run.model.eval()(small_set.images.float() / 255).argmax(1)
    assert (predicted == shifted).float().mean() > 0.8


def test_another_student_and_the_temperature_reach_the_run(small_set, fmnist_teacher, data_root):
    test = load_dataset("fashion-mnist", "test", str(data_root))
    test = subset(test, per_class_sample(test.targets, 10, 3, 0))
    teacher = load_teacher(fmnist_teacher).model
    losses = {}
    for t in (1.0, 20.0):
        proto = PROTOCOLS["rded"].model_copy(
            update={"epochs": 1, "eval_points": 1, "temperature": t}
        )
        run = train_student(small_set, test, teacher, "resnet18", proto, 0, progress_bar=False)
        losses[t] = run.curve[0]["train_loss"]
    assert losses[1.0] > 10 * losses[20.0]  # KL between sharp targets is larger


def test_the_label_teacher_labels_and_relabels(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "lt"
    distill(
        small_config("random"),
        fmnist_teacher,
        out,
        label_teacher=f"{fmnist_teacher}@1",
        run=quiet(data_root),
    )
    ds = load_distilled(out)
    early = load_teacher(f"{fmnist_teacher}@1").model
    with torch.no_grad():
        expected = early(ds.images.float() / 255)
    assert torch.allclose(ds.logits[:, 0], expected, atol=1e-5)
    assert ds.manifest["label_teacher"]["epoch"] == 1 and ds.manifest["teacher"]["epoch"] == 2
    proto = PROTOCOLS["rded"].model_copy(
        update={"epochs": 1, "eval_points": 1, "test_per_class": 3, "probe_images": 30}
    )
    res = evaluate(out, tmp_path / "e", protocol=proto, run=quiet(data_root))
    assert res["teacher"]["epoch"] == 1  # online relabelling uses it by default
    assert res["label_teacher"]["epoch"] == 1 and res["distill_teacher"]["epoch"] == 2


def test_overwrite_replaces_and_a_changed_resume_is_refused(fmnist_teacher, tmp_path):
    out = tmp_path / "o"
    args = fmnist_distill(fmnist_teacher, "--method", "random", "--ipc", "1", "--out", str(out))
    assert run_cli(*args).returncode == 0
    first = json.loads((out / "manifest.json").read_text())
    assert run_cli(*args, "--seed", "4", "--overwrite").returncode == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4 != first["seed"]
    partial = tmp_path / "p"
    killed = run_cli(
        *fmnist_distill(fmnist_teacher, "--method", "random", "--ipc", "1", "--out", str(partial)),
        env={"INFOUTIL_KILL_AT": "write-image:3"},
    )
    assert killed.returncode == -9 and (tmp_path / "p.partial").is_dir()
    changed = run_cli(
        *fmnist_distill(fmnist_teacher, "--method", "random", "--ipc", "2", "--out", str(partial)),
        "--resume",
    )
    assert_one_line_error(changed, "--resume with different options")


def test_the_hard_protocol_trains_on_the_hard_labels_without_a_teacher(small_set, data_root):
    """Hard labels that name the next class teach the next class, with no teacher given."""
    shifted = dataclasses.replace(small_set, labels=(small_set.labels + 1) % 10)
    test = load_dataset("fashion-mnist", "test", str(data_root))
    test = subset(test, per_class_sample(test.targets, 10, 3, 0))
    proto = PROTOCOLS["hard"].model_copy(
        update={"epochs": 40, "eval_points": 1, "cutmix": False, "lr": 0.005}
    )
    run = train_student(shifted, test, None, "convnet3", proto, 0, progress_bar=False)
    with torch.no_grad():
        predicted = run.model.eval()(small_set.images.float() / 255).argmax(1)
    assert (predicted == shifted.labels).float().mean() > 0.8


@pytest.fixture(scope="module")
def set_with_validation(fmnist_teacher, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("val-set") / "random"
    cfg = small_config("random", val_per_class=5)
    distill(cfg, fmnist_teacher, out, run=quiet(data_root))
    return out


def test_hard_labels_choose_the_lr_on_validation_and_record_it(
    set_with_validation, data_root, tmp_path
):
    proto = PROTOCOLS["hard"].model_copy(
        update={"epochs": 2, "eval_points": 1, "lr_grid": (0.001, 0.01)}
    )
    res = evaluate(set_with_validation, tmp_path / "h", protocol=proto, seeds=[0, 1],
                   run=quiet(data_root), split="val")  # fmt: skip
    choice = res["lr_choice"]
    grid, scores = choice["grid"], choice["val_accuracy"]
    # the given grid, and where its best was an edge, values past it (up to 2, ten times apart)
    assert {0.001, 0.01} <= set(grid) and grid == sorted(grid) and len(scores) == len(grid)
    assert set(grid) == {0.001, 0.01, *choice["extended"]} and len(choice["extended"]) <= 2
    assert all(lr in (1e-4, 1e-5, 0.1, 1.0) for lr in choice["extended"])
    best = max(range(len(grid)), key=lambda i: scores[i])
    assert res["lr"] == choice["chosen"] == grid[best]
    assert choice["at_edge"] == (best in (0, len(grid) - 1))
    if choice["at_edge"]:
        assert len(choice["extended"]) == 2  # a best at the edge: every extension was spent
    assert res["labels_from"] == "hard" and res["protocol"] == "hard"
    # measured on the same split, seed 0 is the search's own student at the chosen lr
    assert res["accuracy"][0] == choice["val_accuracy"][best]
    assert (tmp_path / "h" / "lr-search" / f"lr_{res['lr']:g}" / "seed_0.json").is_file()


def test_an_lr_that_wins_at_the_grid_edge_extends_the_grid_past_it():
    from infoutil.evaluation.run import search_lr

    calls = []

    def peak_at(best):
        def score(lr):
            calls.append(lr)
            return -abs(math.log(lr / best))

        return score

    grid, scores, extended = search_lr((0.001, 0.005, 0.01), peak_at(0.0003), 2)
    assert extended == [0.0002, 4e-05] and grid == [4e-05, 0.0002, 0.001, 0.005, 0.01]
    assert grid[max(range(5), key=lambda i: scores[i])] == 0.0002  # nearest the peak
    calls.clear()
    grid, _, extended = search_lr((0.001, 0.005, 0.01), peak_at(0.004), 2)
    assert extended == [] and grid == [0.001, 0.005, 0.01] and len(calls) == 3  # inside
    _, _, extended = search_lr((0.001, 0.005, 0.01), peak_at(0.03), 2)
    assert extended == [0.02, 0.04]  # past the high edge, by its own step (2x)
    _, _, extended = search_lr((0.001, 0.005, 0.01), peak_at(1e-9), 0)
    assert extended == []
    # ties go to the lowest lr, so a flat score extends downwards once per step
    _, _, extended = search_lr((0.001, 0.01), lambda lr: 0.5, 1)
    assert extended == [0.0001]


def test_hard_labels_without_a_validation_split_are_refused(small_set, data_root, tmp_path):
    proto = PROTOCOLS["hard"].model_copy(update={"epochs": 1})
    with pytest.raises(Exception, match="chooses its learning rate on the validation split"):
        evaluate(small_set.path, tmp_path / "h", protocol=proto, run=quiet(data_root))
    given = proto.model_copy(update={"lr": 0.001, "eval_points": 1, "test_per_class": 3})
    res = evaluate(small_set.path, tmp_path / "g", protocol=given, run=quiet(data_root))
    assert res["lr"] == 0.001 and res["lr_choice"] is None


def test_a_steps_budget_sets_the_epochs_and_every_result_records_both(small_set, data_root,
                                                                     tmp_path):  # fmt: skip
    from infoutil.evaluation.run import training_key

    n, bs = len(small_set), 10  # 20 images, batch 10: 2 steps an epoch
    proto = PROTOCOLS["rded"].model_copy(
        update={"steps": 7, "batch_size": bs, "eval_points": 1, "test_per_class": 3}
    )
    res = evaluate(small_set.path, tmp_path / "s", protocol=proto, run=quiet(data_root))
    # 7 steps: 3 whole epochs and one step of a fourth, exactly the budget
    assert (res["epochs"], res["steps"], res["budget"]) == (4, 7, "steps") and n // bs == 2
    assert len(res["curves"][0]["curve"]) == 4
    plain = PROTOCOLS["rded"].model_copy(update={"epochs": 3, "eval_points": 1,
                                                 "test_per_class": 3})  # fmt: skip
    res = evaluate(small_set.path, tmp_path / "e", protocol=plain, run=quiet(data_root))
    assert (res["epochs"], res["budget"]) == (3, "epochs") and res["steps"] == 3 * 2
    # students kept before these fields existed keep their keys: unset fields are not keyed
    key = json.loads(training_key(small_set.path, "convnet3", "t", PROTOCOLS["rded"]))
    assert "steps" not in key["protocol"] and "lr_grid" not in key["protocol"]


def test_the_full_training_set_under_hard_labels_is_the_hlr_reference(
    set_with_validation, fmnist_teacher, data_root, tmp_path
):
    """HLR's reference: every training image (read a batch at a time, never held) with hard
    labels, under a budget of steps like the sets'."""
    full = distill(small_config("full", val_per_class=5), fmnist_teacher, tmp_path / "full",
                   run=quiet(data_root))  # fmt: skip
    proto = PROTOCOLS["hard"].model_copy(
        update={"steps": 3, "lr": 0.001, "eval_points": 1, "test_per_class": 3}
    )
    res = evaluate(full, tmp_path / "e", protocol=proto, run=quiet(data_root))
    assert res["method"] == "full" and res["num_images"] == 59950
    assert (res["steps"], res["epochs"], res["budget"]) == (3, 1, "steps")


def test_bf16_students_learn_and_are_kept_apart_from_fp32_ones(small_set, data_root, tmp_path):
    from infoutil.evaluation.run import training_key

    proto = PROTOCOLS["rded"].model_copy(
        update={"epochs": 3, "eval_points": 1, "test_per_class": 3, "precision": "bf16"}
    )
    res = evaluate(small_set.path, tmp_path / "b", protocol=proto, run=quiet(data_root))
    assert res["accuracy"][0] > 0.1  # chance is 0.1: it learns something in 3 epochs
    fp32 = PROTOCOLS["rded"]
    bf16 = fp32.model_copy(update={"precision": "bf16"})
    keys = [json.loads(training_key(small_set.path, "convnet3", "t", p)) for p in (fp32, bf16)]
    assert "precision" not in keys[0]["protocol"] and keys[1]["protocol"]["precision"] == "bf16"
