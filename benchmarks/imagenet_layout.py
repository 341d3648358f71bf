"""A many-class folder in ImageNet's layout, made from real images, for the memory benchmark.

``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` of symbolic links (nothing is copied):
Tiny-ImageNet's 200 classes (500 training images each; its official val split, 50 each,
sorted into class folders by ``val_annotations.txt``) and ImageWoof's 10 (the shared zips,
extracted once beside the folder). A class both have (n02099601) holds both. Read at
``--image-size 224``, every image is upsampled from 64 px (Tiny) or about 128 px (ImageWoof).

    python benchmarks/imagenet_layout.py --tiny DATA/tiny-imagenet-200 \\
        --imagewoof DATA/imagewoof --out DATA/imagenet-like --classes 210
    python benchmarks/imagenet_layout.py ... --out DATA/imagenet-like-52 --classes 52
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path


def woof_tree(zips: Path, into: Path) -> Path:
    """ImageWoof's zips extracted once (``train/<wnid>/``, ``val/<wnid>/``)."""
    if not (into / "val").is_dir():
        for split in ("train", "val"):
            with zipfile.ZipFile(zips / f"{split}.zip") as zf:
                zf.extractall(into)
    return into


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", type=Path, required=True)
    ap.add_argument("--imagewoof", type=Path, required=True, help="the folder of its zips")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--classes", type=int, default=210, help="the first N classes, sorted")
    args = ap.parse_args()
    woof = woof_tree(args.imagewoof, args.out.parent / "imagewoof-extracted")
    files: dict[tuple[str, str], list[Path]] = {}
    for wnid in sorted((args.tiny / "train").iterdir()):
        files[("train", wnid.name)] = sorted((wnid / "images").iterdir())
    for line in (args.tiny / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        files.setdefault(("val", wnid), []).append(args.tiny / "val" / "images" / name)
    for split in ("train", "val"):
        for wnid in sorted((woof / split).iterdir()):
            files.setdefault((split, wnid.name), []).extend(sorted(wnid.iterdir()))
    wnids = sorted({w for _, w in files})[: args.classes]
    count = 0
    for (split, wnid), sources in sorted(files.items()):
        if wnid not in wnids:
            continue
        folder = args.out / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for src in sources:
            link = folder / f"{src.stem}.JPEG"
            if not link.exists():
                link.symlink_to(src.resolve())
            count += 1
    print(f"{args.out}: {len(wnids)} classes, {count} images")


if __name__ == "__main__":
    main()
