"""ImageWoof and ImageNette by name: the shared zips, the official release folders and .tgz, a
checked download, and imagefolder:PATH over zips, each decoded once into the array cache."""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from infoutil.data import TensorImageDataset, load_dataset
from infoutil.data import download as data_sources
from infoutil.data.fastai import IMAGEWOOF_CLASSES
from infoutil.data.imagenet import display_name
from infoutil.data.sources import dataset_info
from infoutil.errors import UserError
from tests.helpers import assert_one_line_error, run_cli

PER_CLASS = {"train": 3, "val": 2}


@pytest.fixture(scope="module")
def woof_sample(data_root) -> dict[str, list[tuple[str, bytes]]]:
    """A few real ImageWoof JPEGs of every class, per split, from the shared archives."""
    out = {}
    for split, n in PER_CLASS.items():
        with zipfile.ZipFile(data_root / "imagewoof" / f"{split}.zip") as zf:
            names = sorted(x for x in zf.namelist() if x.endswith(".JPEG"))
            out[split] = [
                (name, zf.read(name))
                for wnid in IMAGEWOOF_CLASSES
                for name in [x for x in names if x.startswith(f"{split}/{wnid}/")][:n]
            ]
    return out


def _official_tree(root: Path, sample) -> Path:
    """The official release's layout: imagewoof2-320/{train,val}/<wnid>/<file>.JPEG."""
    base = root / "imagewoof2-320"
    for items in sample.values():
        for name, data in items:
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(data)
    return base


def _tgz(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname=tree.name)
    return archive


def _check_loaded(root: Path, cache: Path, size: int = 128) -> None:
    train = load_dataset("imagewoof", "train", root, cache_dir=cache, image_size=size)
    test = load_dataset("imagewoof", "test", root, cache_dir=cache, image_size=size)
    assert (len(train), len(test)) == (30, 20)
    assert train.info.class_names == tuple(sorted(IMAGEWOOF_CLASSES))
    assert train.get_batch([0]).shape == (1, 3, size, size)
    assert train.targets.tolist() == [c for c in range(10) for _ in range(3)]
    assert isinstance(train, TensorImageDataset)  # decoded once, held as arrays


def test_imagewoof_from_the_official_release_folder(tmp_path, woof_sample):
    _official_tree(tmp_path / "root", woof_sample)
    _check_loaded(tmp_path / "root", tmp_path / "cache")
    # the second load reads the array cache, decoding nothing
    cached = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(cached) == 2 and all((p / "images.npy").is_file() for p in cached)
    # and the file index of each split, so that a second load walks no folder
    assert len(list((tmp_path / "cache").glob("index-*.json"))) == 2
    stamps = [(p / "images.npy").stat().st_mtime_ns for p in cached]
    _check_loaded(tmp_path / "root", tmp_path / "cache")
    assert [(p / "images.npy").stat().st_mtime_ns for p in cached] == stamps


def test_imagewoof_from_the_official_tgz_is_extracted_once(tmp_path, woof_sample):
    tree = _official_tree(tmp_path / "made", woof_sample)
    root = tmp_path / "root"
    root.mkdir()
    _tgz(tree, root / "imagewoof2-320.tgz")
    _check_loaded(root, tmp_path / "cache", size=96)
    assert (root / "imagewoof2-320" / "train").is_dir()


def test_the_wrong_classes_are_refused(tmp_path, woof_sample):
    base = _official_tree(tmp_path / "root", woof_sample)
    (base / "train" / "n02115641").rename(base / "train" / "dingo")
    (base / "val" / "n02115641").rename(base / "val" / "dingo")
    with pytest.raises(UserError, match="are not imagewoof's 10 wnids"):
        load_dataset("imagewoof", "train", tmp_path / "root", cache_dir=tmp_path / "c")


def test_download_checks_the_digest_then_extracts(file_server, tmp_path, woof_sample, monkeypatch):
    served, url = file_server
    archive = _tgz(_official_tree(tmp_path / "made", woof_sample), served / "imagewoof2-320.tgz")
    monkeypatch.setenv("INFOUTIL_MIRROR", url)
    root = tmp_path / "root"
    root.mkdir()
    # our small archive is not the published one: refused, and nothing lands in the data root
    with pytest.raises(UserError, match="SHA-256 .* is not the published"):
        load_dataset("imagewoof", "train", root, download=True, cache_dir=tmp_path / "c")
    assert list(root.iterdir()) == []
    published = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data_sources.DOWNLOAD_DIGEST, "imagewoof2-320.tgz", published)
    train = load_dataset("imagewoof", "train", root, download=True, cache_dir=tmp_path / "c")
    assert len(train) == 30
    assert sorted(p.name for p in root.iterdir()) == ["imagewoof2-320", "imagewoof2-320.tgz"]


def test_imagefolder_reads_zips_into_the_array_cache(tmp_path, woof_sample):
    root = tmp_path / "woofzip"
    root.mkdir()
    for split, items in woof_sample.items():
        with zipfile.ZipFile(root / f"{split}.zip", "w") as zf:
            for name, data in items:
                zf.writestr(name, data)
    info = dataset_info(f"imagefolder:{root}")  # a scan and one header, nothing decoded
    assert info.image_size == 128 and info.class_names == tuple(sorted(IMAGEWOOF_CLASSES))
    train = load_dataset(f"imagefolder:{root}", "train", image_size=64)
    test = load_dataset(f"imagefolder:{root}", "test", image_size=64)
    assert isinstance(train, TensorImageDataset) and (len(train), len(test)) == (30, 20)
    assert train.get_batch([29]).shape == (1, 3, 64, 64) and int(train.targets[29]) == 9


# the official wnid sets, as fast.ai's releases ship them (imagewoof2-320/ and imagenette2-320/
# train/ folders; github.com/fastai/imagenette), with ImageNet's names for them
OFFICIAL = {
    "imagewoof": {
        "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
        "n02089973": "English foxhound", "n02093754": "Border terrier",
        "n02096294": "Australian terrier", "n02099601": "golden retriever",
        "n02105641": "Old English sheepdog", "n02111889": "Samoyed", "n02115641": "dingo",
    },
    "imagenette": {
        "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
        "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
        "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
        "n03888257": "parachute",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_the_subsets_are_the_official_wnids_with_imagenet_names(name):
    info = dataset_info(name)
    assert info.class_names == tuple(sorted(OFFICIAL[name]))
    assert {w: display_name(w) for w in info.class_names} == OFFICIAL[name]


def test_breed_names_for_people():
    assert display_name("n02086240") == "Shih-Tzu" and display_name("n03888257") == "parachute"
    assert display_name("n03888605") == "parallel bars"  # ImageNet's, not parachute
    assert display_name("airplane") == "airplane"


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (120, 60, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_imagenette_reads_the_official_folders_and_names_the_misfits(tmp_path):
    """The official release's wnid folders load; a wrong folder is named, with the missing
    wnid and its class name (the first three folders are fine and say nothing)."""
    root = tmp_path / "data"
    jpeg = _tiny_jpeg()
    for split in ("train", "val"):
        for wnid in OFFICIAL["imagenette"]:
            (root / "imagenette2-320" / split / wnid).mkdir(parents=True)
            (root / "imagenette2-320" / split / wnid / "a.JPEG").write_bytes(jpeg)
    train = load_dataset("imagenette", "train", root, cache_dir=tmp_path / "c", image_size=32)
    assert train.info.class_names == tuple(sorted(OFFICIAL["imagenette"]))
    for split in ("train", "val"):
        base = root / "imagenette2-320" / split
        (base / "n03888257").rename(base / "n03888605")
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", "train", root, cache_dir=tmp_path / "c", image_size=32)
    assert "\n" not in str(err.value)
    assert "unexpected n03888605" in str(err.value)
    assert "missing n03888257 (parachute)" in str(err.value)
    assert "n01440764" not in str(err.value)


@pytest.mark.slow
def test_data_info_on_the_shared_copy(data_root):
    proc = run_cli("data", "info", "--dataset", "imagewoof")
    assert proc.returncode == 0, proc.stderr
    assert "train: 9025 images, 3x128x128, 10 classes, per class 580..949" in proc.stdout
    assert "test: 3929 images" in proc.stdout and "n02086240 (Shih-Tzu)" in proc.stdout


def test_a_missing_subset_names_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli(
        "data", "info", "--dataset", "imagenette", "--data-root", str(tmp_path / "empty")
    )
    assert_one_line_error(proc, "imagenette not found", "--download")


def test_same_images_from_the_shared_zips_and_the_release_folder(tmp_path, woof_sample):
    """One decoder for both layouts: the same file gives the same pixels."""
    base = _official_tree(tmp_path / "root", woof_sample)
    name, data = woof_sample["train"][0]
    assert (base / name).read_bytes() == data
    ds = load_dataset("imagewoof", "train", tmp_path / "root", cache_dir=tmp_path / "c")
    zipped = tmp_path / "z" / "imagewoof"
    zipped.mkdir(parents=True)
    for split, items in woof_sample.items():
        with zipfile.ZipFile(zipped / f"{split}.zip", "w") as zf:
            for n, d in items:
                zf.writestr(n, d)
    dz = load_dataset("imagewoof", "train", tmp_path / "z", cache_dir=tmp_path / "c")
    assert torch.equal(ds.get_batch([0, 7, 29]), dz.get_batch([0, 7, 29]))
