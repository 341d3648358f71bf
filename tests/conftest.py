"""Shared fixtures: real data from $INFOUTIL_DATA, a small real teacher, an isolated cache."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from infoutil.data.fashion_mnist import DEBIAN_FASHION_MNIST
from tests.helpers import quiet


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("INFOUTIL_DATA")
    if root is None:
        if DEBIAN_FASHION_MNIST.is_dir():
            pytest.skip("INFOUTIL_DATA is not set; only Debian's Fashion-MNIST is available")
        pytest.fail("set INFOUTIL_DATA to the folder holding cifar10/ and fashion-mnist/")
    path = Path(root).resolve()
    assert path.is_dir(), f"INFOUTIL_DATA={root} does not exist"
    os.environ["INFOUTIL_DATA"] = str(path)  # subprocesses may run from another folder
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Tests never touch the user's cache; one cache is shared by the whole session."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["INFOUTIL_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fmnist_teacher(tmp_path_factory, data_root) -> Path:
    """A real ConvNet-3 teacher: 2 epochs on 60 Fashion-MNIST images per class."""
    from infoutil.config import TeacherConfig
    from infoutil.training.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "fmnist"
    cfg = TeacherConfig(
        dataset="fashion-mnist", epochs=2, train_per_class=60, seed=0, test_per_class=100
    )
    train_teacher(cfg, out, run=quiet(data_root))
    return out


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
