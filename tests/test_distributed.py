"""torchrun with two gloo processes on CPU: sharded distill is identical, DDP runs finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infoutil.io.distilled import VARYING_FILES
from tests.helpers import SMALL_DISTILL as ARGS
from tests.helpers import run_cli


def torchrun(*args: str, env: dict | None = None, timeout: int = 900):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "infoutil",
        *args,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe, stages", [("paper", 2), ("default", 1)])
def test_two_ranks_distill_the_same_bytes_as_one(recipe, stages, fmnist_teacher, tmp_path):
    """One process on two threads against two ranks on one thread each, on a pool of 200
    candidates (chunks of 64, 64, 64 and 8): the same bytes, with the Shapley stage (paper)
    and without it (the default: whole images, the cluster rule on the teacher's features)."""
    one = tmp_path / "one"
    args = [
        "distill",
        "--method",
        "infoutil",
        "--recipe",
        recipe,
        "--dataset",
        "fashion-mnist",
        "--ipc",
        "2",
        "--candidates-per-class",
        "20",
        "--budget",
        "32",
        "-q",
        "--threads",
    ]
    proc = run_cli(
        *args,
        "2",
        "--teacher",
        str(fmnist_teacher),
        "--out",
        str(one),
        env={"INFOUTIL_CACHE": str(tmp_path / "c1")},
    )
    assert proc.returncode == 0, proc.stderr
    two = tmp_path / "two"
    proc = torchrun(
        *args,
        "1",
        "--teacher",
        str(fmnist_teacher),
        "--out",
        str(two),
        env={"INFOUTIL_CACHE": str(tmp_path / "c2")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        if rel.name not in VARYING_FILES:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    # each rank scored its own chunks: both ranks' chunks are in the store
    chunks = list((tmp_path / "c2" / "scores").rglob("chunk_*.safetensors"))
    assert len(chunks) == stages * 4  # (shapley +) utility, 4 chunks each


@pytest.mark.slow
def test_ddp_evaluate_finishes_and_is_correct(fmnist_teacher, tmp_path, data_root):
    distilled = tmp_path / "d"
    assert run_cli(*ARGS, "--teacher", str(fmnist_teacher), "--out", str(distilled)).returncode == 0
    quick = tmp_path / "quick.yaml"
    quick.write_text("test_per_class: 50\nprobe_images: 100\n")
    out = tmp_path / "e"
    proc = torchrun(
        "evaluate",
        str(distilled),
        "--out",
        str(out),
        "--epochs",
        "20",
        "--seeds",
        "2",
        "--config",
        str(quick),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["batch_size"] == 10
    assert results["mean"] > 0.2  # 10 classes: chance is 0.1
    assert all(run["curve"][-1]["epoch"] == 20 for run in results["curves"])
    # rank 0's refusal stops every rank (before, rank 1 waited at a barrier for ever), and
    # --resume of the finished output is the same word on both ranks
    again = ("evaluate", str(distilled), "--out", str(out), "--epochs", "20", "--seeds", "2")
    again = (*again, "--config", str(quick), "-q")
    refused = torchrun(*again, timeout=300)
    assert refused.returncode != 0 and "already holds a finished output" in refused.stderr
    resumed = torchrun(*again, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text()) == results


@pytest.mark.slow
def test_ddp_teacher_training_checkpoints_once(tmp_path):
    out = tmp_path / "t"
    proc = torchrun(
        "teacher",
        "train",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--train-per-class",
        "40",
        "--test-per-class",
        "20",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "epoch_0001.json").read_text())
    assert meta["test_accuracy"] > 0.2
    assert len(list(Path(out).glob("epoch_*.safetensors"))) == 1
