"""Tiny-ImageNet by name: the official folder, the official zip and a checked download, on a
fixture of real images from the release (3 classes, 4 training and 2 val images each; its
wnids.txt lists the classes in reverse, as the release's file is unsorted)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from infoutil.data import ValidationSplit, load_dataset
from infoutil.data import download as data_download
from infoutil.data.sources import dataset_info
from infoutil.data.tiny_imagenet import find_release, wnids_and_names
from infoutil.errors import UserError
from tests.helpers import assert_one_line_error, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-imagenet-200"
WNIDS = ("n01443537", "n01629819", "n01641577")


def _root(tmp_path: Path, form: str = "folder") -> Path:
    root = tmp_path / "data"
    root.mkdir(parents=True)
    if form == "folder":
        shutil.copytree(FIXTURE, root / "tiny-imagenet-200")
    else:
        _zip(root / "tiny-imagenet-200.zip")
    return root


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(FIXTURE.rglob("*")):
            if f.is_file():
                zf.write(f, f"tiny-imagenet-200/{f.relative_to(FIXTURE)}")
    return path


def test_the_official_folder_in_sorted_wnid_order_with_words_names(tmp_path):
    root = _root(tmp_path)
    info = dataset_info("tiny-imagenet", root)  # wnids.txt only, nothing decoded
    assert info.class_names == WNIDS and info.image_size == 64 and info.channels == 3
    train = load_dataset("tiny-imagenet", "train", root, cache_dir=tmp_path / "c")
    test = load_dataset("tiny-imagenet", "test", root, cache_dir=tmp_path / "c")
    assert (len(train), len(test)) == (12, 6)
    assert train.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert test.targets.tolist() == [0, 0, 1, 1, 2, 2]  # the val split, from val_annotations.txt
    assert train.get_batch([0]).shape == (1, 3, 64, 64)
    assert train.source_id(0).startswith("train/n01443537/images/")
    _, names = wnids_and_names(find_release(root))
    assert names == {"n01443537": "goldfish", "n01629819": "European fire salamander",
                     "n01641577": "bullfrog"}  # fmt: skip
    # the held-out validation split comes from the training images
    held = load_dataset("tiny-imagenet", "val", root, cache_dir=tmp_path / "c",
                        validation=ValidationSplit(1))  # fmt: skip
    assert held.targets.tolist() == [0, 1, 2]


def test_the_official_zip_gives_the_same_images(tmp_path):
    folder = load_dataset("tiny-imagenet", "train", _root(tmp_path / "a"), cache_dir=tmp_path / "c")
    zipped = load_dataset("tiny-imagenet", "train", _root(tmp_path / "b", "zip"),
                          cache_dir=tmp_path / "c")  # fmt: skip
    assert torch.equal(folder.get_batch(range(12)), zipped.get_batch(range(12)))
    assert folder.targets.tolist() == zipped.targets.tolist()


def test_data_info_on_the_folder(tmp_path):
    proc = run_cli("data", "info", "--dataset", "tiny-imagenet", "--data-root",
                   str(_root(tmp_path)), env={"INFOUTIL_CACHE": str(tmp_path / "c")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train: 12 images, 3x64x64, 3 classes" in proc.stdout
    assert "test: 6 images" in proc.stdout and "n01443537 (goldfish)" in proc.stdout


def test_a_checked_download_lands_and_a_tampered_one_does_not(file_server, tmp_path, monkeypatch):
    served, url = file_server
    archive = _zip(served / "tiny-imagenet-200.zip")
    monkeypatch.setenv("INFOUTIL_MIRROR", url)
    root = tmp_path / "root"
    root.mkdir()
    # the real archive's published MD5 does not match the fixture's zip: refused, nothing lands
    with pytest.raises(UserError, match="is not the published"):
        load_dataset("tiny-imagenet", "train", root, download=True, cache_dir=tmp_path / "c")
    assert list(root.iterdir()) == []
    published = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data_download.DOWNLOAD_DIGEST, "tiny-imagenet-200.zip", published)
    train = load_dataset("tiny-imagenet", "train", root, download=True, cache_dir=tmp_path / "c")
    assert len(train) == 12 and [p.name for p in root.iterdir()] == ["tiny-imagenet-200.zip"]


def test_a_missing_release_says_where_it_looked(tmp_path):
    proc = run_cli("data", "info", "--dataset", "tiny-imagenet", "--data-root", str(tmp_path))
    assert_one_line_error(proc, "tiny-imagenet not found under", "tiny-imagenet-200.zip")
