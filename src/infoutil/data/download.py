"""Downloads that land only when checked: every file against its published digest.

Nothing is fetched unless the user asks (``--download``). A file goes to a scratch folder in
the cache, is checked, and only then is copied atomically into the data root, so a broken or
tampered download leaves nothing there. ``INFOUTIL_MIRROR`` (a base URL) fetches the same
file names from a mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from infoutil.atomic import atomic_writer
from infoutil.errors import UserError

# published digests of the files the downloads fetch: MD5 (32 hex digits) or SHA-256 (64).
# CIFAR and Fashion-MNIST: the authors' pages (torchvision uses the same). fast.ai publishes
# none for its ImageNet subsets; these are the ones torchvision's Imagenette (MD5) and
# FastAI.jl's ImageWoof (SHA-256) check the same official archives against.
DOWNLOAD_DIGEST = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "imagenette2-320.tgz": "3df6f0d01a2c9592104656642f5e78a3",
    "imagewoof2-320.tgz": "4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d",
    # Tiny-ImageNet's official archive (cs231n.stanford.edu); the digest its loaders check
    "tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de",
}


def download_all(urls: list[str], dest_dir: Path, cache_dir: Path) -> None:
    """Fetch every file into a scratch folder, check each against its published digest, and only
    then move them into ``dest_dir``: a bad or broken download leaves nothing in the data root.
    ``INFOUTIL_MIRROR`` (a base URL) fetches the same file names from a mirror."""
    mirror = os.environ.get("INFOUTIL_MIRROR")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="download-") as scratch:
        fetched = []
        for url in urls:
            name = url.rsplit("/", 1)[1]
            if mirror:
                url = mirror.rstrip("/") + "/" + name
            tmp = Path(scratch) / name
            print(f"downloading {url}")
            published = DOWNLOAD_DIGEST[name]
            algorithm = "MD5" if len(published) == 32 else "SHA-256"
            digest = hashlib.md5() if algorithm == "MD5" else hashlib.sha256()
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        digest.update(block)
                        f.write(block)
            except OSError as err:
                raise UserError(
                    f"cannot download {url} ({err}); fetch it by hand into {dest_dir}"
                ) from err
            if digest.hexdigest() != published:
                raise UserError(
                    f"{url}: the download's {algorithm} {digest.hexdigest()} is not the published "
                    f"{published}; nothing was written to {dest_dir}, try again or "
                    "fetch it by hand"
                )
            fetched.append(tmp)
        dest_dir.mkdir(parents=True, exist_ok=True)
        for tmp in fetched:
            with atomic_writer(dest_dir / tmp.name) as f, open(tmp, "rb") as src:
                shutil.copyfileobj(src, f)


def extract_tar(archive: Path, into: Path) -> None:
    tmp = into.with_name(into.name + f".tmp-{os.getpid()}")
    with tarfile.open(archive) as tf:
        tf.extractall(tmp, filter="data")
    (tmp / into.name).rename(into)  # the rename is the completion marker
    tmp.rmdir()
