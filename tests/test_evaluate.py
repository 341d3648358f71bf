"""Students trained on distilled sets: above chance, last-epoch rule, seeds, compare."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from infoutil.config import PROTOCOLS, DistillConfig
from infoutil.data import DatasetInfo, TensorImageDataset
from infoutil.distributed import Context
from infoutil.evaluation.compare import compare
from infoutil.evaluation.run import evaluate
from infoutil.io.checkpoint import save_teacher_epoch
from infoutil.methods import distill
from infoutil.models import create_model
from tests.helpers import assert_one_line_error, quiet, run_cli

TIMING_KEYS = ("evaluate_seconds",)


@pytest.fixture(scope="module")
def sets(fmnist_teacher, data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    out = {}
    for method in ("infoutil", "random"):
        cfg = DistillConfig(
            method=method,
            dataset="fashion-mnist",
            ipc=5,
            candidates_per_class=10,
            informativeness={"budget": 32},
        )
        out[method] = distill(cfg, fmnist_teacher, root / method, run=quiet(data_root))
    return out


def _protocol(epochs=12, **kw):
    return PROTOCOLS["rded"].model_copy(update={"epochs": epochs, "eval_points": 3, **kw})


@pytest.fixture(scope="module")
def two_seeds(sets, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "infoutil"
    return out, evaluate(
        sets["infoutil"],
        out,
        protocol=_protocol(),
        seeds=[0, 1],
        run=quiet(data_root),
    )


def test_a_short_evaluation_beats_chance(two_seeds):
    _, results = two_seeds
    assert results["mean"] > 0.25  # 10 classes: chance is 0.10
    for key in (
        "method",
        "dataset",
        "ipc",
        "student",
        "protocol",
        "epochs",
        "teacher_accuracy",
        "seeds",
        "accuracy",
        "mean",
        "std",
        "distill_seconds",
        "evaluate_seconds",
        "config",
    ):
        assert key in results
    assert results["method"] == "infoutil" and results["ipc"] == 5


def test_the_reported_accuracy_is_the_last_epochs(two_seeds):
    out, results = two_seeds
    for acc, run in zip(results["accuracy"], results["curves"], strict=True):
        last = run["curve"][-1]
        assert last["epoch"] == 12 and last["test_accuracy"] == acc
        assert all("test_accuracy" not in p for p in run["curve"][:-1])
    # the curve is drawn by report, beside the output (the command line does it)
    from infoutil.report.plots import plot_results_curves

    plot_results_curves(results, out.parent / "curve.png")
    assert (out.parent / "curve.png").stat().st_size > 1000


def test_seeds_are_distinct_and_reproducible(two_seeds, sets, data_root, tmp_path):
    _, results = two_seeds
    assert results["curves"][0]["curve"] != results["curves"][1]["curve"]
    again = evaluate(
        sets["infoutil"],
        tmp_path / "again",
        protocol=_protocol(),
        seeds=[1],
        run=quiet(data_root),
    )
    assert again["curves"][0] == results["curves"][1]


def test_compare_two_runs(two_seeds, sets, data_root, tmp_path):
    out_a, res_a = two_seeds
    out_b = tmp_path / "random"
    res_b = evaluate(
        sets["random"],
        out_b,
        protocol=_protocol(6),
        seeds=[0],
        run=quiet(data_root),
    )
    rows = compare([out_a, out_b], tmp_path / "table")
    assert [(r["method"], r["ipc"], r["seeds"]) for r in rows] == [
        ("infoutil", 5, 2),
        ("random", 5, 1),
    ]
    md = (tmp_path / "table" / "results.md").read_text()
    assert f"{100 * res_a['mean']:.2f} +- {100 * res_a['std']:.2f}" in md
    # one seed has no spread: the table gives the mean alone, not "+- 0.00"
    assert f"| {100 * res_b['mean']:.2f} | 1 |" in md
    csv_lines = (tmp_path / "table" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,recipe,dataset,ipc") and len(csv_lines) == 3
    assert ",test," in csv_lines[1]  # the split each row measured
    from infoutil.report.plots import plot_compare  # figures belong to report: the CLI draws them

    assert plot_compare(rows, tmp_path / "table") == [
        tmp_path / "table" / "accuracy_vs_ipc_fashion-mnist_convnet3.png"
    ]


def test_a_teacher_with_another_class_count_is_refused(sets, tmp_path):
    info = DatasetInfo("fashion-mnist", ("a", "b", "c"), 28, 1, (0.5,), (0.5,))
    save_teacher_epoch(
        tmp_path / "three",
        create_model("convnet3", info),
        {"arch": "convnet3", "dataset": info.to_dict(), "epoch": 1},
    )
    proc = run_cli(
        "evaluate",
        str(sets["infoutil"]),
        "--teacher",
        str(tmp_path / "three"),
        "--out",
        str(tmp_path / "e"),
        "--epochs",
        "1",
    )
    assert_one_line_error(proc, "3 classes")
    assert not (tmp_path / "e").exists()


def test_results_schema_is_plain_json(two_seeds):
    out, _ = two_seeds
    data = json.loads((out / "results.json").read_text())
    assert data["reported"] == "last_epoch" and isinstance(data["accuracy"], list)
    assert statistics.pstdev(data["accuracy"]) == pytest.approx(data["std"], abs=1e-12)


def _record(method, protocol, mean, ipc=10, epochs=100):
    return {"method": method, "dataset": "d", "student": "s", "split": "val", "recipe": None,
            "ipc": ipc, "epochs": epochs, "protocol": protocol, "mean": mean, "std": 0.01,
            "seeds": [0, 1]}  # fmt: skip


def test_regimes_side_by_side_with_ior_hlr_and_lrs():
    """One column per regime; IOR against random real images of the same IPC and regime; HLR
    against the full training set under hard labels; LRS from the soft IOR and HLR."""
    import math

    from infoutil.evaluation.compare import regime_markdown, regime_rows

    records = [
        _record("infoutil", "hard", 0.30), _record("infoutil", "rded", 0.50),
        _record("random", "hard", 0.28), _record("random", "rded", 0.45),
        _record("full", "hard", 0.70, ipc=None),
    ]  # fmt: skip
    rows = {r["method"]: r for r in regime_rows(records)}
    ours = rows["infoutil"]
    assert ours["ior_hard"] == pytest.approx(0.02) and ours["ior_rded"] == pytest.approx(0.05)
    assert ours["hlr"] == pytest.approx(0.40)
    alpha = 0.5 * 0.05 - 0.5 * 0.40
    assert ours["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert rows["random"]["ior_rded"] == 0 and "hlr" not in rows["full"]
    table = regime_markdown(list(rows.values()))
    assert "| hard (%) | rded (%) | IOR hard | IOR rded | HLR | LRS |" in table
    assert (
        "| infoutil | - | d | 10 | s | val | 100 epochs | 30.00 +- 1.00 | 50.00 +- 1.00 |" in table
    )


def test_accuracy_reads_the_transformed_images():
    """sharded_accuracy's transform reaches the model (benchmarks/scale_shift.py relies on it):
    a model that reads mean brightness is right on the images and wrong on their negatives."""
    info = DatasetInfo("toy", ("dark", "bright"), 4, 1, (0.0,), (1.0,))
    images = torch.cat([torch.full((3, 1, 4, 4), 10), torch.full((3, 1, 4, 4), 240)]).byte()
    data = TensorImageDataset(info, "test", images, torch.tensor([0, 0, 0, 1, 1, 1]))

    class Brightness(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            m = x.mean((1, 2, 3)) - 0.5
            return torch.stack([-m, m], 1) + self.w

    ctx = Context()
    assert ctx.sharded_accuracy(Brightness(), data, 4) == 1.0
    assert ctx.sharded_accuracy(Brightness(), data, 4, transform=lambda x: 1 - x) == 0.0
