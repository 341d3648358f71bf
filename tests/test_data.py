"""Datasets load from real files, in a fixed class order, with one-line errors for bad input."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from infoutil.data import load_dataset, per_class_sample, resolve_cache_dir
from infoutil.data.cifar import CIFAR10_CLASSES
from infoutil.data.fashion_mnist import FASHION_MNIST_CLASSES
from infoutil.errors import UserError
from tests.helpers import assert_one_line_error, run_cli


def test_fashion_mnist_from_idx_files(data_root):
    train = load_dataset("fashion-mnist", "train", data_root)
    test = load_dataset("fashion-mnist", "test", data_root)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.info.class_names == FASHION_MNIST_CLASSES
    assert (train.info.channels, train.info.image_size) == (1, 28)
    assert train.get_batch([0, 1]).shape == (2, 1, 28, 28)
    assert torch.bincount(train.targets).tolist() == [6000] * 10


def test_cifar10_from_zip_archives_in_standard_order(data_root):
    test = load_dataset("cifar10", "test", data_root)
    assert len(test) == 10000
    assert test.info.class_names == CIFAR10_CLASSES  # sorted folders = CIFAR-10 label order
    assert test.get_batch([0]).dtype == torch.uint8
    assert test.source_id(0).startswith("test/airplane/")
    # the decoded archive was cached atomically: a second load reads the cache
    cached = [p for p in resolve_cache_dir().iterdir() if (p / "images.npy").is_file()]
    assert cached and not list(resolve_cache_dir().glob("*.partial"))
    again = load_dataset("cifar10", "test", data_root)
    assert torch.equal(again.get_batch([5, 7]), test.get_batch([5, 7]))


@pytest.fixture(scope="module")
def cifar_sample(data_root) -> dict[str, list[tuple[str, bytes]]]:
    """A few real CIFAR-10 JPEGs per class and split, straight from the archives."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for split in ("train", "test"):
        with zipfile.ZipFile(data_root / "cifar10" / f"{split}.zip") as zf:
            names = [n for n in zf.namelist() if n.endswith(".jpg")]
            chosen = []
            for cls in CIFAR10_CLASSES[:3]:
                chosen += [n for n in names if n.startswith(f"{split}/{cls}/")][:4]
            out[split] = [(n, zf.read(n)) for n in chosen]
    return out


def _write_tree(root: Path, sample, test_name: str = "test") -> Path:
    for split, items in sample.items():
        for name, data in items:
            rel = name.replace("test/", f"{test_name}/", 1) if split == "test" else name
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return root


def test_imagefolder_tree_with_val_split(tmp_path, cifar_sample):
    root = _write_tree(tmp_path / "tiny", cifar_sample, test_name="val")
    train = load_dataset(f"imagefolder:{root}", "train")
    val = load_dataset(f"imagefolder:{root}", "test")
    assert train.info.class_names == ("airplane", "automobile", "bird")
    assert (len(train), len(val)) == (12, 12)
    assert train.info.image_size == 32 and train.info.channels == 3
    assert train.get_batch([0, 11]).shape == (2, 3, 32, 32)
    assert train.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_cifar10_extracted_folder_form(tmp_path, data_root):
    """cifar10 also loads from extracted train/ and test/ folders (two real images a class)."""
    base = tmp_path / "cifar10"
    for split in ("train", "test"):
        with zipfile.ZipFile(data_root / "cifar10" / f"{split}.zip") as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
            for cls in CIFAR10_CLASSES:
                for n in [n for n in names if n.startswith(f"{split}/{cls}/")][:2]:
                    (base / n).parent.mkdir(parents=True, exist_ok=True)
                    (base / n).write_bytes(zf.read(n))
    train = load_dataset("cifar10", "train", tmp_path)
    assert len(train) == 20 and train.info.class_names == CIFAR10_CLASSES
    assert train.targets.tolist() == [c for c in range(10) for _ in range(2)]
    (base / "train" / "airplane").rename(base / "train" / "aeroplane")
    with pytest.raises(UserError, match="classes differ"):
        load_dataset("cifar10", "train", tmp_path)


def _pickle_batch(path: Path, images: np.ndarray, labels: list[int], key: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": images.reshape(len(images), -1), key: labels}, f)


def test_cifar_pickle_releases(tmp_path, data_root):
    """The python-pickle layouts of CIFAR-10 and CIFAR-100, written from real CIFAR pixels."""
    real = load_dataset("cifar10", "test", data_root)
    imgs = real.get_batch(torch.arange(12)).numpy()
    labels = real.targets[:12].tolist()
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _pickle_batch(c10 / f"data_batch_{i}", imgs[:2], labels[:2], "labels")
    _pickle_batch(c10 / "test_batch", imgs, labels, "labels")
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert (len(train), len(test)) == (10, 12)
    assert torch.equal(test.get_batch([3]), real.get_batch([3]))
    assert train.info.class_names == CIFAR10_CLASSES

    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    names = [f"class{i:02d}" for i in range(100)]
    with open(c100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names}, f)
    _pickle_batch(c100 / "train", imgs, [i * 7 for i in range(12)], "fine_labels")
    _pickle_batch(c100 / "test", imgs[:5], list(range(5)), "fine_labels")
    c = load_dataset("cifar100", "train", tmp_path)
    assert c.info.num_classes == 100 and c.info.class_names[3] == "class03"
    assert c.targets.tolist()[:3] == [0, 7, 14]


def test_corrupt_image_names_the_file(tmp_path, cifar_sample):
    root = _write_tree(tmp_path / "bad", cifar_sample)
    victim = root / cifar_sample["train"][5][0]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    ds = load_dataset(f"imagefolder:{root}", "train")
    with pytest.raises(UserError, match=victim.name):
        ds.get_batch(torch.arange(len(ds)))


def test_bad_folders_give_one_line_errors(tmp_path, cifar_sample):
    root = _write_tree(tmp_path / "empty", cifar_sample)
    (root / "train" / "deer").mkdir()
    proc = run_cli(
        "teacher",
        "train",
        "--dataset",
        f"imagefolder:{root}",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "t"),
    )
    assert_one_line_error(proc, "deer", "empty")

    root2 = _write_tree(tmp_path / "mismatch", cifar_sample)
    for f in (root2 / "test" / "bird").iterdir():
        f.unlink()
    (root2 / "test" / "bird").rmdir()
    with pytest.raises(UserError, match="train and test classes differ"):
        load_dataset(f"imagefolder:{root2}", "train")

    root3 = _write_tree(tmp_path / "junk", cifar_sample)
    (root3 / "train" / "bird" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="notes.txt"):
        load_dataset(f"imagefolder:{root3}", "train")


def test_truncated_zip_member_fails_the_decode_and_leaves_no_cache(tmp_path, cifar_sample):
    archive = tmp_path / "c" / "train.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in cifar_sample["train"]:
            zf.writestr(name, data[:150] if name == cifar_sample["train"][2][0] else data)
    with zipfile.ZipFile(tmp_path / "c" / "test.zip", "w") as zf:
        for name, data in cifar_sample["test"]:
            zf.writestr(name, data)
    cache = tmp_path / "cache"
    from infoutil.data.folders import load_folder_cached

    with pytest.raises(UserError, match=cifar_sample["train"][2][0].split("/")[-1]):
        load_folder_cached("x", tmp_path / "c", "train", 3, 32, (0.5,) * 3, (0.2,) * 3, cache)
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".partial"]  # none complete


def test_unknown_names_and_missing_paths(tmp_path):
    assert_one_line_error(
        run_cli("teacher", "train", "--dataset", "mnist-9000", "--out", str(tmp_path / "x")),
        "mnist-9000",
    )
    assert_one_line_error(
        run_cli(
            "teacher",
            "train",
            "--dataset",
            "fashion-mnist",
            "--arch",
            "vgg99",
            "--out",
            str(tmp_path / "x"),
        ),
        "vgg99",
    )
    assert_one_line_error(
        run_cli(
            "teacher",
            "train",
            "--dataset",
            "cifar10",
            "--out",
            str(tmp_path / "x"),
            "--data-root",
            str(tmp_path / "nope"),
        ),
        "does not exist",
    )


def test_per_class_sample_is_seeded_and_balanced():
    targets = torch.arange(100) % 4
    a = per_class_sample(targets, 4, 5, seed=1)
    b = per_class_sample(targets, 4, 5, seed=1)
    c = per_class_sample(targets, 4, 5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(targets[a]).tolist() == [5] * 4


def _items_and_opener(cifar_sample):
    files = dict(cifar_sample["train"])
    items = [(name, i % 10) for i, name in enumerate(sorted(files))]
    return items, lambda name: io.BytesIO(files[name])


def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path, cifar_sample):
    from infoutil.data.cache import decoded_split

    items, opener = _items_and_opener(cifar_sample)
    first = decoded_split(tmp_path, "k", items, opener, 3, 32, "sample")
    images = first["images"].clone()
    (tmp_path / "k" / "images.npy").write_bytes(b"garbage")
    second = decoded_split(tmp_path, "k", items, opener, 3, 32, "sample")
    assert torch.equal(second["images"], images)
    assert isinstance(second["images"], torch.Tensor)  # small: held in memory


def test_a_large_split_is_read_by_rows_with_the_same_pixels(tmp_path, cifar_sample, monkeypatch):
    """Above the in-memory threshold the cache serves rows on demand (bounded memory), with
    the pixels the in-memory path gives; a truncated file is rebuilt, never trusted."""
    from infoutil.data import rows
    from infoutil.data.cache import decoded_split

    items, opener = _items_and_opener(cifar_sample)
    held = decoded_split(tmp_path, "k", items, opener, 3, 32, "sample")
    monkeypatch.setattr(rows, "IN_MEMORY_BYTES", 1000)
    read = decoded_split(tmp_path, "k", items, opener, 3, 32, "sample")
    assert isinstance(read["images"], rows.RowFile)
    pick = torch.tensor([5, 0, 11])
    assert torch.equal(read["images"][pick], held["images"][pick])
    path = tmp_path / "k" / "images.npy"
    path.write_bytes(path.read_bytes()[:-100])
    again = decoded_split(tmp_path, "k", items, opener, 3, 32, "sample")
    assert torch.equal(again["images"][pick], held["images"][pick])


def test_a_killed_decode_resumes_to_the_same_bytes(tmp_path, cifar_sample, monkeypatch):
    """Stopped after its first chunk, the decode goes on from the second, and the cache it
    finishes is byte for byte the one an uninterrupted decode writes."""
    from infoutil.data import cache as data_cache

    monkeypatch.setattr(data_cache, "CHUNK", 4)
    items, opener = _items_and_opener(cifar_sample)
    whole = data_cache.decoded_split(tmp_path / "a", "k", items, opener, 3, 32, "sample")
    calls = []

    def failing(name):
        calls.append(name)
        if len(calls) > 6:  # mid second chunk: the first is saved, the second is not
            raise KeyboardInterrupt
        return opener(name)

    with pytest.raises(KeyboardInterrupt):
        data_cache.decoded_split(tmp_path / "b", "k", items, failing, 3, 32, "sample")
    assert (tmp_path / "b" / "k.partial" / "progress.json").is_file()
    resumed = []
    again = data_cache.decoded_split(
        tmp_path / "b", "k", items, lambda n: resumed.append(n) or opener(n), 3, 32, "sample"
    )
    assert resumed == [n for n, _ in items[4:]]  # the first chunk was not decoded again
    for name in ("images.npy", "labels.npy", "ids.npy"):
        assert (tmp_path / "a" / "k" / name).read_bytes() == (
            tmp_path / "b" / "k" / name
        ).read_bytes()
    assert torch.equal(whole["images"], again["images"])
