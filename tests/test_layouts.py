"""Real dataset layouts as they ship (Tiny-ImageNet, ImageNet's flat val), --image-size, and
downloads that check the published checksum before anything reaches the data root."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from infoutil.data import download as data_sources
from infoutil.data import load_dataset
from infoutil.errors import UserError
from tests.helpers import assert_one_line_error, run_cli

WNIDS = ("n01443537", "n01629819")


def _jpeg(path: Path, shade: int, size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, 80)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def _tiny_imagenet(root: Path) -> Path:
    """Tiny-ImageNet's shipped layout, three images a class and split."""
    for k, wnid in enumerate(WNIDS):
        for i in range(3):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 40 * k + i)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t9\t9\n")
    lines = []
    for i in range(6):
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", 10 * i)
        lines.append(f"val_{i}.JPEG\t{WNIDS[i % 2]}\t0\t0\t9\t9")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(root / "test" / "images" / "test_0.JPEG", 5)  # unlabelled, as shipped
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    return root


def test_tiny_imagenet_loads_as_shipped(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny-imagenet-200")
    train = load_dataset(f"imagefolder:{root}", "train")
    test = load_dataset(f"imagefolder:{root}", "test")  # its val/, the labelled held-out split
    assert train.info.class_names == test.info.class_names == WNIDS
    assert len(train) == 6 and len(test) == 6
    labels = {test.source_id(i): int(test.targets[i]) for i in range(len(test))}
    assert labels == {f"images/val_{i}.JPEG": i % 2 for i in range(6)}  # from the annotations
    assert train.source_id(0) == f"{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"
    assert train.get_batch([0]).shape == (1, 3, 40, 40)


def _imagenet(root: Path) -> Path:
    for k, wnid in enumerate(WNIDS):
        for i in range(2):
            _jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", 60 * k + i)
    for i in range(1, 5):
        _jpeg(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", 30 * i)
    return root


def test_a_flat_imagenet_val_is_named_and_sorted_by_the_prepare_command(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    proc = run_cli("data", "info", "--dataset", f"imagefolder:{root}")
    assert_one_line_error(proc, "flat folder of images", "infoutil data prepare", "--val-labels")
    labels = tmp_path / "val_labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {WNIDS[i % 2]}\n" for i in range(1, 5)))
    bad = tmp_path / "bad.txt"
    bad.write_text(labels.read_text().replace(WNIDS[1], "n99999999", 1))
    proc = run_cli("data", "prepare", str(root), "--val-labels", str(tmp_path / "bad.txt"))
    assert_one_line_error(proc, "class 'n99999999'", "is not a folder of")  # nothing moved
    assert len(list((root / "val").glob("*.JPEG"))) == 4
    proc = run_cli("data", "prepare", str(root), "--val-labels", str(labels))
    assert proc.returncode == 0, proc.stderr
    test = load_dataset(f"imagefolder:{root}", "test")
    assert test.info.class_names == WNIDS and sorted(test.targets.tolist()) == [0, 0, 1, 1]


def test_kaggles_solution_file_loads_a_flat_val_directly(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    rows = [f"ILSVRC2012_val_{i:08d},{WNIDS[i % 2]} 1 2 3 4" for i in range(1, 5)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    test = load_dataset(f"imagefolder:{root}", "test")
    assert len(test) == 4 and test.info.class_names == WNIDS


def test_image_size_is_set_recorded_and_checked(tmp_path, data_root):
    root = _tiny_imagenet(tmp_path / "tiny")
    ds = load_dataset(f"imagefolder:{root}", "train", image_size=24)
    assert ds.info.image_size == 24 and ds.get_batch([0]).shape == (1, 3, 24, 24)
    with pytest.raises(UserError, match="cifar10 images are 32 px; --image-size 64"):
        load_dataset("cifar10", "train", data_root, image_size=64)
    teacher = tmp_path / "t"
    name = f"imagefolder:{root}"
    base = ["--dataset", name, "--image-size", "24"]
    proc = run_cli("teacher", "train", *base, "--epochs", "1", "--out", str(teacher))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((teacher / "epoch_0001.json").read_text())["dataset"]["image_size"] == 24
    out = tmp_path / "d"
    proc = run_cli(
        "distill",
        "--method",
        "random",
        *base,
        "--teacher",
        str(teacher),
        "--ipc",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["image_size"] == manifest["config"]["image_size"] == 24
    proc = run_cli(
        "distill",
        "--method",
        "random",
        "--dataset",
        name,
        "--image-size",
        "32",
        "--teacher",
        str(teacher),
        "--ipc",
        "1",
        "--out",
        str(tmp_path / "x"),
    )
    assert_one_line_error(proc, "expects 3x24x24 inputs", "gives 3x32x32")


def test_a_tampered_download_is_refused_and_leaves_nothing(file_server, tmp_path, data_root):
    served, url = file_server
    for name in data_sources.DOWNLOAD_DIGEST:
        if name.endswith("-ubyte.gz"):  # the real files, one of them tampered with
            (served / name).write_bytes((data_root / "fashion-mnist" / name).read_bytes())
    tampered = served / "t10k-labels-idx1-ubyte.gz"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    root = tmp_path / "root"
    root.mkdir()
    proc = run_cli(
        "data",
        "info",
        "--dataset",
        "fashion-mnist",
        "--download",
        "--data-root",
        str(root),
        env={"INFOUTIL_MIRROR": url, "INFOUTIL_CACHE": str(tmp_path / "cache")},
    )
    assert_one_line_error(proc, "MD5", "is not the published", "nothing was written")
    assert list(root.iterdir()) == []
    assert not list((tmp_path / "cache").glob("download-*"))  # the scratch folder is gone


def test_a_download_that_matches_lands_in_the_data_root(
    file_server, tmp_path, data_root, monkeypatch
):
    served, url = file_server
    published = {}
    for name in data_sources.DOWNLOAD_DIGEST:
        if name.endswith("-ubyte.gz"):
            data = (data_root / "fashion-mnist" / name).read_bytes()
            (served / name).write_bytes(data)
            published[name] = hashlib.md5(data).hexdigest()
    # the copies here are Debian's (recompressed), so their digests stand in for the published
    monkeypatch.setattr(data_sources, "DOWNLOAD_DIGEST", published)
    monkeypatch.setenv("INFOUTIL_MIRROR", url)
    monkeypatch.delenv("INFOUTIL_DATA")
    root = tmp_path / "root"
    root.mkdir()
    train = load_dataset("fashion-mnist", "train", root, download=True, cache_dir=tmp_path / "c")
    assert len(train) == 60000 and sorted(p.name for p in (root / "fashion-mnist").iterdir()) == (
        sorted(published)
    )
