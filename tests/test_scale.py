"""Data larger than memory: an ImageNet-layout folder is indexed once, and a distil decodes
only its candidate pool (real CIFAR-10 images in wnid folders stand in for ImageNet's)."""

from __future__ import annotations

import zipfile

import pytest
import torch

from infoutil.config import DistillConfig
from infoutil.data import base as data_base
from infoutil.data import folders, load_dataset
from infoutil.io.checkpoint import save_teacher_epoch
from infoutil.io.distilled import load_distilled
from infoutil.methods import distill
from infoutil.models import create_model
from infoutil.runtime import RunContext

WNIDS = ("n01440764", "n02102040", "n02979186")
PER_CLASS = {"train": 12, "val": 3}


@pytest.fixture
def imagenet_layout(tmp_path, data_root):
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` from real CIFAR-10 test images."""
    root = tmp_path / "imagenet"
    with zipfile.ZipFile(data_root / "cifar10" / "test.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        taken = iter(names)
        for split, count in PER_CLASS.items():
            for wnid in WNIDS:
                folder = root / split / wnid
                folder.mkdir(parents=True)
                for i in range(count):
                    (folder / f"{wnid}_{i}.JPEG").write_bytes(zf.read(next(taken)))
    return root


def test_the_file_index_is_built_once_and_follows_the_folders(imagenet_layout, tmp_path,
                                                              monkeypatch):  # fmt: skip
    walks = []
    real = folders._scan_folder_tree
    monkeypatch.setattr(folders, "_scan_folder_tree", lambda d: walks.append(d) or real(d))
    name, cache = f"imagefolder:{imagenet_layout}", tmp_path / "cache"
    first = load_dataset(name, "train", cache_dir=cache)
    assert len(walks) == 2  # train and val, once
    again = load_dataset(name, "train", cache_dir=cache)
    assert len(walks) == 2 and again.samples == first.samples  # read from the index
    new = imagenet_layout / "train" / WNIDS[0] / "extra.JPEG"
    new.write_bytes((imagenet_layout / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes())
    grown = load_dataset(name, "train", cache_dir=cache)
    assert len(walks) == 3 and len(grown) == len(first) + 1  # a changed folder is walked again


def test_a_distil_decodes_only_its_candidate_pool(imagenet_layout, tmp_path, monkeypatch):
    name = f"imagefolder:{imagenet_layout}"
    train = load_dataset(name, "train", cache_dir=tmp_path / "c")
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    model = create_model("convnet3", train.info)
    save_teacher_epoch(teacher, model, {"arch": "convnet3", "dataset": train.info.to_dict(),
                                        "epoch": 1})  # fmt: skip
    decoded = []
    real = data_base.decode_image
    monkeypatch.setattr(data_base, "decode_image", lambda src, *a, **k: decoded.append(str(src))
                        or real(src, *a, **k))  # fmt: skip
    cfg = DistillConfig(dataset=name, ipc=1, candidates_per_class=4)
    run = RunContext(cache_dir=str(tmp_path / "c"), progress=False)
    out = distill(cfg, teacher, tmp_path / "set", run=run)
    pool = {str(imagenet_layout / "train" / s["source_id"])
            for s in _sources(out)}  # fmt: skip
    files = set(decoded)
    assert files and all("/train/" in f for f in files)  # no test image, no other split
    assert len(files) <= 3 * 4 < 3 * PER_CLASS["train"]  # the pool, not the training set
    assert pool <= files


def _sources(out):
    manifest = load_distilled(out).manifest
    return [{"source_id": p["source_id"]} for img in manifest["images"] for p in img["patches"]]


@pytest.mark.parametrize("factor", [1, 2])
def test_soft_labels_stream_the_set_in_batches(factor):
    """A set's soft labels, read a few images at a time (the whole set in float does not fit
    at 224 px), are each patch's logits in the set's order, as one forward of all gives."""
    from infoutil.data.base import DatasetInfo
    from infoutil.io.checkpoint import Teacher
    from infoutil.methods.common import soft_labels

    info = DatasetInfo("t", ("a", "b", "c"), 32, 3, (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = create_model("convnet3", info).eval()
    teacher = Teacher(model, info, {}, None)
    images = torch.randint(0, 256, (11, 3, 32, 32), dtype=torch.uint8)
    whole = soft_labels(teacher, images, factor, batch_size=10_000)
    assert whole.shape == (11, factor * factor, 3)
    for batch in (1, 4, 7):  # one patch a forward, whole images, a ragged last batch
        torch.testing.assert_close(soft_labels(teacher, images, factor, batch), whole)
    # the logits follow the images: reversing the set reverses them
    torch.testing.assert_close(soft_labels(teacher, images.flip(0), factor, 4), whole.flip(0))
