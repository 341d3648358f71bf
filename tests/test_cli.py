"""The command line as a user meets it: config precedence, the documented names, data info."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from tests.helpers import fmnist_distill, run_cli

ROOT = Path(__file__).parents[1]
NAME = re.compile(r"\binfoutil(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_infoutil_name_in_the_readme_and_docs_resolves():
    names = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names |= {n for n in NAME.findall(doc.read_text()) if not n.endswith(".py")}
    assert "infoutil.io.load_distilled" in names  # the README's loading example
    for name in sorted(names):
        assert _resolve(name) is not None, name


def test_a_config_file_beats_the_defaults_and_a_flag_beats_the_file(tmp_path, data_root):
    teacher_cfg = tmp_path / "teacher.yaml"
    teacher_cfg.write_text(
        "arch: convnet4\nepochs: 1\nseed: 7\ntrain_per_class: 3\ntest_per_class: 3\n"
    )
    base = ["teacher", "train", "--dataset", "fashion-mnist", "--threads", "1"]
    proc = run_cli(*base, "--config", str(teacher_cfg), "--out", str(tmp_path / "t1"))
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "t1" / "config.json").read_text())
    assert (saved["arch"], saved["epochs"], saved["seed"]) == ("convnet4", 1, 7)
    proc = run_cli(
        *base,
        "--config",
        str(teacher_cfg),
        "--arch",
        "convnet3",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "t2"),
    )
    saved = json.loads((tmp_path / "t2" / "config.json").read_text())
    assert (saved["arch"], saved["epochs"], saved["seed"]) == ("convnet3", 1, 0)

    teacher = tmp_path / "t2"
    distill_cfg = tmp_path / "distill.yaml"
    distill_cfg.write_text("method: random\nipc: 1\nseed: 3\n")
    proc = run_cli(
        *fmnist_distill(teacher, "--config", str(distill_cfg), "--out", str(tmp_path / "d1"))
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "d1" / "manifest.json").read_text())
    assert (manifest["method"], manifest["ipc"], manifest["seed"]) == ("random", 1, 3)
    proc = run_cli(
        *fmnist_distill(teacher, "--config", str(distill_cfg), "--method", "herding"),
        "--candidates-per-class",
        "4",
        "--out",
        str(tmp_path / "d2"),
    )
    assert json.loads((tmp_path / "d2" / "manifest.json").read_text())["method"] == "herding"

    eval_cfg = tmp_path / "eval.yaml"
    eval_cfg.write_text("epochs: 1\ntest_per_class: 5\nprobe_images: 20\n")
    for out, flags, epochs in (("e1", [], 1), ("e2", ["--epochs", "2"], 2)):
        proc = run_cli(
            "evaluate",
            str(tmp_path / "d1"),
            "--config",
            str(eval_cfg),
            *flags,
            "--out",
            str(tmp_path / out),
            "--threads",
            "1",
            "-q",
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads((tmp_path / out / "results.json").read_text())["epochs"] == epochs


def test_data_info_prints_the_splits_and_the_class_order(data_root):
    proc = run_cli("data", "info", "--dataset", "fashion-mnist")
    assert proc.returncode == 0, proc.stderr
    assert "train: 60000 images, 1x28x28, 10 classes, per class 6000..6000" in proc.stdout
    assert "test: 10000 images" in proc.stdout
    assert "classes (label order): T-shirt/top, Trouser, Pullover" in proc.stdout


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_factor_is_honoured_by_the_whole_image_baselines(method, tmp_path, data_root):
    from infoutil.io.distilled import load_distilled

    teacher = ROOT / "src/infoutil/assets/teacher-fashion-mnist-convnet3"
    out = tmp_path / method
    proc = run_cli(
        *fmnist_distill(teacher, "--method", method, "--ipc", "1", "--factor", "2"),
        "--candidates-per-class",
        "4",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    ds = load_distilled(out)
    # whole real images, labelled and augmented as factor-2 sets are: four cells each
    assert ds.factor == 2 and ds.manifest["layout"] == "whole images"
    assert ds.logits.shape == (10, 4, 10)
    assert all(p["box"] == [0, 0, 28, 28] for e in ds.manifest["images"] for p in e["patches"])


COMMANDS_WITH_DATASET = [
    ["data", "info"],
    ["teacher", "train"],
    ["teacher", "eval"],
    ["teacher", "import"],
    ["distill"],
]


@pytest.mark.parametrize("command", COMMANDS_WITH_DATASET, ids=" ".join)
def test_every_commands_dataset_help_names_every_dataset(command):
    """--dataset and --image-size come from one definition each, so every command lists the
    registry's datasets, and --image-size names the ones it resizes (not imagefolder only)."""
    from typer.testing import CliRunner

    from infoutil.cli import app
    from infoutil.data.sources import DATASETS, RESIZABLE

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert all(name in text for name in DATASETS), text
    if "--image-size" in text:
        assert "only for imagewoof, imagenette, tiny-imagenet, imagefolder:PATH" in text
        assert set(RESIZABLE) == {"imagewoof", "imagenette", "tiny-imagenet", "imagefolder:PATH"}


def test_help_shows_the_defaults_it_once_hid():
    from typer.testing import CliRunner

    from infoutil.cli import app

    def text(*command):
        out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"}).output
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())

    train = text("teacher", "train")
    assert "0.05 up to 32 px, 0.01 above" in train and "Default 128" in train
    assert "convnet3" in train and "resnet18" in train  # --arch lists the registry
    distill = text("distill")
    for shown in ("(default 300)", "(default 512)", "(default 0)", "Images per class (required)"):
        assert shown in distill, shown
    assert "default 300, RDED's" in text("evaluate") and "resnet18" in text("evaluate")
