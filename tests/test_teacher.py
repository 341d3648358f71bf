"""Teacher training: learns, checkpoints every epoch, resumes exactly after a kill."""

from __future__ import annotations

import json
import os

import pytest
import torch

from infoutil.data import DatasetInfo, load_dataset
from infoutil.errors import UserError
from infoutil.io.checkpoint import completed_epochs, load_teacher
from tests.helpers import assert_one_line_error, quiet, run_cli


def test_two_epochs_on_a_real_subset_beat_chance(fmnist_teacher):
    assert completed_epochs(fmnist_teacher) == [1, 2]
    meta = json.loads((fmnist_teacher / "epoch_0002.json").read_text())
    assert meta["test_accuracy"] > 0.5  # chance is 0.1
    for key in ("arch", "dataset", "epoch", "seed", "test_accuracy", "weights_sha256"):
        assert key in meta
    assert meta["dataset"]["class_names"][0] == "T-shirt/top"
    t = load_teacher(f"{fmnist_teacher}@1")
    assert t.epoch == 1 and t.weights_sha256 != meta["weights_sha256"]


def test_checkpoint_must_fit_the_dataset(fmnist_teacher, data_root):
    cifar = load_dataset("cifar10", "test", data_root).info
    with pytest.raises(UserError, match="reads 1-channel images but dataset cifar10 has 3"):
        load_teacher(fmnist_teacher, expect=cifar)


def test_teacher_eval_refuses_a_misfit_before_decoding_anything(fmnist_teacher, tmp_path):
    """The Fashion-MNIST teacher on ImageWoof: refused in one line, nothing decoded or cached."""
    cache = tmp_path / "cache"
    proc = run_cli("teacher", "eval", str(fmnist_teacher), "--dataset", "imagewoof",
                   env={"INFOUTIL_CACHE": str(cache)})  # fmt: skip
    assert_one_line_error(proc, "reads 1-channel images but dataset imagewoof has 3 channels")
    assert not cache.exists() or not any(cache.iterdir())
    fewer = DatasetInfo("x", ("a", "b"), 28, 1, (0.5,), (0.5,))
    with pytest.raises(UserError, match="has 10 classes"):
        load_teacher(fmnist_teacher, expect=fewer)


def test_changed_weights_are_detected(fmnist_teacher, tmp_path):
    import shutil

    copy = tmp_path / "t"
    shutil.copytree(fmnist_teacher, copy)
    raw = bytearray((copy / "epoch_0002.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (copy / "epoch_0002.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="do not match the hash"):
        load_teacher(copy)


def _train_args(out, epochs=3):
    return [
        "teacher",
        "train",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        str(epochs),
        "--train-per-class",
        "30",
        "--test-per-class",
        "20",
        "--seed",
        "3",
        "--out",
        str(out),
        "--threads",
        "1",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(tmp_path):
    """Killed at a fixed step of epoch 2 (3 steps an epoch), whatever the machine's speed."""
    whole = tmp_path / "whole"
    assert run_cli(*_train_args(whole)).returncode == 0
    killed = tmp_path / "killed"
    proc = run_cli(*_train_args(killed), env={"INFOUTIL_KILL_AT": "teacher-step:5"})
    assert proc.returncode == -9
    assert completed_epochs(killed) == [1]
    again = run_cli(*_train_args(killed))
    assert_one_line_error(again, "--resume")
    assert run_cli(*_train_args(killed), "--resume").returncode == 0
    a = json.loads((whole / "epoch_0003.json").read_text())["weights_sha256"]
    b = json.loads((killed / "epoch_0003.json").read_text())["weights_sha256"]
    assert a == b
    assert (whole / "epoch_0003.safetensors").read_bytes() == (
        killed / "epoch_0003.safetensors"
    ).read_bytes()
    assert torch.equal(
        load_teacher(whole).model.net.fc.weight, load_teacher(killed).model.net.fc.weight
    )


@pytest.mark.slow
def test_a_compiled_teacher_learns_what_an_eager_one_does(tmp_path, data_root):
    """--compile (the 128 px teachers' route) changes the last bits only."""
    from infoutil.config import TeacherConfig
    from infoutil.training.teacher import train_teacher

    runs = {}
    for compiled in (False, True):
        cfg = TeacherConfig(
            dataset="fashion-mnist", epochs=1, train_per_class=20, test_per_class=20,
            compile=compiled,
        )  # fmt: skip
        out = tmp_path / str(compiled)
        train_teacher(cfg, out, run=quiet(data_root))
        runs[compiled] = load_teacher(out).model.state_dict()
    for name, eager in runs[False].items():
        assert torch.allclose(runs[True][name], eager, rtol=1e-3, atol=1e-4), name
    assert json.loads((tmp_path / "True" / "config.json").read_text())["compile"] is True


def test_a_machine_that_cannot_compile_is_refused_at_the_first_step(tmp_path, monkeypatch):
    import torch._dynamo
    import torch._inductor.config as inductor

    from infoutil.runtime import compiled_or_refused

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled to reuse
    torch._dynamo.reset()
    try:
        with inductor.patch({"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/c++",)}):
            # a pointwise op between the matmuls: inductor must generate (and compile) C++ for it
            net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
            model = compiled_or_refused(net, "the student")
            with pytest.raises(UserError, match="cannot build the student here") as err:
                model(torch.rand(3, 4))
        assert "\n" not in str(err.value)
    finally:
        torch._dynamo.reset()


def test_reschedule_changes_only_the_epochs_of_a_run_in_progress(tmp_path):
    """A budget that shrank: 2 of 4 planned epochs done, then finish at 3 with the cosine redone."""
    out = tmp_path / "t"
    assert run_cli(*_train_args(out, epochs=4), "--stop-after", "2").returncode == 0
    assert_one_line_error(run_cli(*_train_args(out, epochs=3), "--resume"), "--reschedule")
    assert_one_line_error(
        run_cli(*_train_args(out, epochs=2), "--resume", "--reschedule"), "epoch 2 is already done"
    )
    changed = [*_train_args(out, epochs=3), "--resume", "--reschedule", "--lr", "0.5"]
    assert_one_line_error(run_cli(*changed), "only --epochs may change")
    assert run_cli(*_train_args(out, epochs=3), "--resume", "--reschedule").returncode == 0
    assert completed_epochs(out) == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row.get("epoch") for row in log] == [1, 2, None, 3]
    assert log[2] == {"rescheduled_after_epoch": 2, "from_epochs": 4, "to_epochs": 3}
    # the rescheduled run is now its own: a plain resume at 3 epochs is accepted
    assert run_cli(*_train_args(out, epochs=3), "--resume").returncode == 0


def test_the_loss_watch_names_a_climbing_loss_and_what_to_try():
    from infoutil.training.teacher import LossWatch

    # the abandoned ConvNet-5 run at lr 0.05 on ImageWoof: 2.35 at first, near 2.9 by batch 15
    climbing = LossWatch(0.05, 10)
    said = [climbing.add(2.35 + 0.04 * i) for i in range(20)]
    assert said[:19] == [None] * 19 and "the loss is climbing" in said[19]
    assert "\n" not in said[19] and "try --lr 0.01" in said[19]
    assert climbing.add(3.5) is None  # once
    falling = LossWatch(0.05, 10)
    assert all(falling.add(2.3 - 0.03 * i) is None for i in range(40))
    watch = LossWatch(0.05, 10)
    watch.add(2.3)
    with pytest.raises(UserError, match="became nan at batch 2.*try 0.01"):
        watch.add(float("nan"))


def test_default_learning_rate_by_input_size():
    from infoutil.training.teacher import default_lr

    assert default_lr("convnet3", 32) == 0.05 and default_lr("convnet3", 28) == 0.05
    assert default_lr("convnet4", 64) == 0.01 and default_lr("convnet5", 128) == 0.01


def test_a_teacher_that_cannot_fit_in_memory_is_refused_up_front(tmp_path, monkeypatch):
    """The estimate (a batch's activations, measured per image) is held against the memory
    available: with too little, one line says how much it needs and what to lower."""
    from infoutil import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: 200 * 2**20)  # 200 MiB free
    from infoutil.config import TeacherConfig
    from infoutil.training.teacher import train_teacher
    from tests.helpers import quiet

    cfg = TeacherConfig(dataset="fashion-mnist", train_per_class=5, test_per_class=2,
                        batch_size=4096)  # fmt: skip
    with pytest.raises(UserError, match=r"needs about .* GiB .* lower --batch-size") as err:
        train_teacher(cfg, tmp_path / "t", run=quiet(os.environ["INFOUTIL_DATA"]))
    assert "\n" not in str(err.value) and not (tmp_path / "t").exists()


def test_loader_workers_stream_the_same_batches(tmp_path, data_root):
    """Batches decoded ahead by DataLoader workers are the batches read in-process: the same
    weights to the bit."""
    from infoutil.config import TeacherConfig
    from infoutil.training.teacher import train_teacher
    from tests.helpers import quiet

    weights = {}
    for workers in (0, 2):
        cfg = TeacherConfig(dataset="fashion-mnist", epochs=1, train_per_class=8,
                            test_per_class=2, batch_size=16, loader_workers=workers)  # fmt: skip
        train_teacher(cfg, tmp_path / str(workers), run=quiet(data_root))
        weights[workers] = load_teacher(tmp_path / str(workers)).weights_sha256
    assert weights[0] == weights[2]
