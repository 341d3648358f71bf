"""The ImageNet path end to end at 224 px: an ImageNet-layout folder (wnid class folders, a flat
val/ with Kaggle's LOC_val_solution.csv) made from real ImageWoof images, a ResNet-18 teacher
imported from torchvision-layout weights, then distill (factor 2), evaluate with a ResNet-18
student (the ImageNet stem) and report, in bounded time and memory."""

from __future__ import annotations

import json
import resource
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tests.fixtures.pretrained_reference import fill, torchvision_resnet_shapes
from tests.helpers import run_cli

CLASSES = 3  # of ImageWoof's ten
TRAIN, VAL = 5, 2  # images per class


def make_imagenet_layout(imagewoof: Path, root: Path) -> list[str]:
    """Real ImageWoof JPEGs renamed as ImageNet ships them; returns the wnids used."""
    val_rows = ["ImageId,PredictionString"]
    with (
        zipfile.ZipFile(imagewoof / "train.zip") as tz,
        zipfile.ZipFile(imagewoof / "val.zip") as vz,
    ):
        wnids = sorted({n.split("/")[1] for n in tz.namelist() if n.count("/") == 2})[:CLASSES]
        number = 0
        for wnid in wnids:
            train = sorted(n for n in tz.namelist() if n.startswith(f"train/{wnid}/") and
                           n.endswith(".JPEG"))[:TRAIN]  # fmt: skip
            for i, name in enumerate(train):
                dest = root / "train" / wnid / f"{wnid}_{i + 1}.JPEG"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tz.read(name))
            val = sorted(n for n in vz.namelist() if n.startswith(f"val/{wnid}/") and
                         n.endswith(".JPEG"))[:VAL]  # fmt: skip
            for name in val:
                number += 1
                image_id = f"ILSVRC2012_val_{number:08d}"
                (root / "val").mkdir(parents=True, exist_ok=True)
                (root / "val" / f"{image_id}.JPEG").write_bytes(vz.read(name))
                val_rows.append(f"{image_id},{wnid} 10 12 100 110")
    (root / "LOC_val_solution.csv").write_text("\n".join(val_rows) + "\n")
    return wnids


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_imagenet_layout_at_224_px_with_an_imported_resnet18(tmp_path, data_root):
    folder = tmp_path / "imagenet"
    wnids = make_imagenet_layout(data_root / "imagewoof", folder)
    dataset = f"imagefolder:{folder}"
    weights = tmp_path / "resnet18-f37072fd.pth"  # torchvision's file name for its V1 weights
    torch.save(fill(torchvision_resnet_shapes("resnet18"), 0), weights)
    start = time.perf_counter()

    proc = _ok(run_cli("teacher", "import", str(weights), "--arch", "resnet18", "--classes",
                       "imagenet-1k", "--dataset", dataset, "--image-size", "224", "--out",
                       str(tmp_path / "teacher"), "--threads", "2"))  # fmt: skip
    assert "torchvision layout" in proc.stdout and "1000 classes of imagenet-1k" in proc.stdout
    meta = json.loads((tmp_path / "teacher" / "epoch_0001.json").read_text())
    assert meta["dataset"]["image_size"] == 224 and len(meta["dataset"]["class_names"]) == 1000

    distilled = tmp_path / "set"
    _ok(
        run_cli(
            "distill",
            "--method",
            "infoutil",
            "--dataset",
            dataset,
            "--image-size",
            "224",
            "--teacher",
            str(tmp_path / "teacher"),
            "--ipc",
            "1",
            "--candidates-per-class",
            "4",
            "--budget",
            "32",
            "--factor",
            "2",
            "--threads",
            "2",
            "-q",
            "--out",
            str(distilled),
        )
    )  # fmt: skip (factor 2: the stitched path at 224 px)
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["factor"] == 2 and manifest["dataset"]["image_size"] == 224
    restriction = manifest["teacher"]["class_restriction"]
    assert restriction["class_names"] == wnids and restriction["from_classes"] == 1000
    imagenet = [line.split("\t")[0] for line in
                (Path(__file__).parents[1] / "src/infoutil/assets/imagenet1k_classes.tsv")
                .read_text().splitlines()]  # fmt: skip
    assert restriction["indices"] == [imagenet.index(w) for w in wnids]

    _ok(run_cli("evaluate", str(distilled), "--student", "resnet18", "--epochs", "2", "--seeds",
                "1", "--threads", "2", "-q", "--out", str(tmp_path / "eval")))  # fmt: skip
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["student"] == "resnet18"
    assert results["teacher"]["class_restriction"]["indices"] == restriction["indices"]
    _ok(run_cli("report", str(tmp_path), "--out", str(tmp_path / "report")))
    assert (tmp_path / "report" / "report.html").is_file()

    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"imagenet path at 224 px: {seconds:.0f} s, peak RSS of a step {peak_mib:.0f} MiB")
    # 16 images a forward at 224 px (forward_batch_size 512 took this run to 3.2 GB)
    assert peak_mib < 4096 and seconds < 600
