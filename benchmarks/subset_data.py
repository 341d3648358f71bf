"""A smaller copy of an ImageFolder zip dataset (the first N files per class, sorted), in
the same layout, so that a timing run can travel where the full archive cannot (the device
machine takes 64 MiB). The images are copied as they are stored, not re-encoded, so the same
subset is the same bytes. A count of 0 keeps every file of that split.

    python benchmarks/subset_data.py --source ../shared/data/cifar10 --out .device-data/cifar10 \
        --train-per-class 1000 --test-per-class 100
    # ImageWoof's whole test set (its val split, 34 MB) and one train image a class, which is
    # all that evaluating distilled sets needs (the class folders)
    python benchmarks/subset_data.py --source ../shared/data/imagewoof \
        --out .device-data/imagewoof --train-per-class 1 --test-per-class 0 --test-split val
    # ImageNette's copy comes as train/ and val/ folders: the same, zipped (about 47 MB)
    python benchmarks/subset_data.py --source DATA/imagenette --out .device-data/imagenette \
        --train-per-class 1 --test-per-class 0 --test-split val
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from infoutil.data.folders import scan_zip
from infoutil.errors import UserError


def subset_zip(source: Path, out: Path, split: str, per_class: int) -> int:
    if not source.is_file():
        raise SystemExit(f"error: {source} does not exist; --source is a folder with train.zip")
    with zipfile.ZipFile(source) as zin:
        try:
            by_class = scan_zip(zin, split, str(source))  # sorted names, images only
        except UserError as err:
            raise SystemExit(f"error: {err}") from None
        short = {c: n for c, n in by_class.items() if len(n) < per_class}
        if short:
            raise SystemExit(f"{source}: fewer than {per_class} files in {sorted(short)}")
        tmp = out.with_suffix(".zip.part")
        count = 0
        with zipfile.ZipFile(tmp, "w") as zout:
            for cls in sorted(by_class):
                for name in by_class[cls][: per_class or None]:
                    # the source's entry info (its date too): the same subset, the same bytes
                    zout.writestr(zin.getinfo(name), zin.read(name))
                    count += 1
        tmp.replace(out)
    return count


def subset_folder(source: Path, out: Path, per_class: int) -> int:
    """The same from a ``<split>/<class>/`` folder (ImageNette's copy): a zip of the files as
    they are stored (``<split>/<class>/<file>`` inside)."""
    split = source.name
    tmp, count = out.with_suffix(".zip.part"), 0
    with zipfile.ZipFile(tmp, "w") as zout:
        for cls in sorted(p for p in source.iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            if len(files) < per_class:
                raise SystemExit(f"{cls}: fewer than {per_class} files")
            for f in files[: per_class or None]:
                zout.write(f, f"{split}/{cls.name}/{f.name}")
                count += 1
    tmp.replace(out)
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="a folder holding train.zip and test.zip")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--test-split", default="test", help="the test split's name (ImageWoof: val)")
    args = ap.parse_args()
    source, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train_per_class), (args.test_split, args.test_per_class)):
        if (source / split).is_dir() and not (source / f"{split}.zip").is_file():
            count = subset_folder(source / split, out / f"{split}.zip", n)
        else:
            count = subset_zip(source / f"{split}.zip", out / f"{split}.zip", split, n)
        print(f"{out / (split + '.zip')}: {count} images")


if __name__ == "__main__":
    main()
