"""Runs survive kills, bad input and concurrent use, and lose nothing."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infoutil.data import DatasetInfo
from infoutil.errors import UserError
from infoutil.io.checkpoint import save_teacher_epoch
from infoutil.io.distilled import COMPLETE, VARYING_FILES, load_distilled
from infoutil.models import create_model
from tests.helpers import SMALL_DISTILL as DISTILL
from tests.helpers import assert_one_line_error, fmnist_distill, run_cli


def _distill_args(teacher, out):
    return [*DISTILL, "--teacher", str(teacher), "--out", str(out)]


def _same_tree(a: Path, b: Path, skip=VARYING_FILES) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name not in skip:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def uninterrupted(fmnist_teacher, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    out = root / "out"
    proc = run_cli(*_distill_args(fmnist_teacher, out), env={"INFOUTIL_CACHE": str(root / "c")})
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("point", ["shapley-chunk:2", "utility-chunk:2", "write-image:7"])
def test_distill_resumes_byte_identically_after_sigkill(
    point, fmnist_teacher, uninterrupted, tmp_path
):
    env = {"INFOUTIL_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    killed = run_cli(*_distill_args(fmnist_teacher, out), env={**env, "INFOUTIL_KILL_AT": point})
    assert killed.returncode == -9
    assert not out.exists() and (tmp_path / "out.partial").is_dir()  # marked incomplete
    with pytest.raises(UserError, match="interrupted run"):
        load_distilled(out)
    assert_one_line_error(run_cli(*_distill_args(fmnist_teacher, out), env=env), "--resume")
    resumed = run_cli(*_distill_args(fmnist_teacher, out), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    _same_tree(out, uninterrupted)
    assert not (tmp_path / "out.partial").exists()


TEACHER = [
    "teacher",
    "train",
    "--dataset",
    "fashion-mnist",
    "--epochs",
    "2",
    "--train-per-class",
    "30",
    "--test-per-class",
    "10",
    "--seed",
    "5",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def whole_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tw") / "t"
    assert run_cli(*TEACHER, "--out", str(out)).returncode == 0
    return out


@pytest.mark.parametrize("point", ["teacher-step:2", "teacher-step:5", "teacher-checkpoint:2"])
def test_teacher_resumes_to_identical_weights(point, whole_teacher, tmp_path):
    out = tmp_path / "t"
    killed = run_cli(*TEACHER, "--out", str(out), env={"INFOUTIL_KILL_AT": point})
    assert killed.returncode == -9
    assert run_cli(*TEACHER, "--out", str(out), "--resume").returncode == 0
    for name in ("epoch_0001.safetensors", "epoch_0002.safetensors", "epoch_0002.json"):
        assert (out / name).read_bytes() == (whole_teacher / name).read_bytes(), name


EVALUATE = ["--epochs", "6", "--seeds", "2", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def eval_args(tmp_path_factory) -> list[str]:
    """Score on 30 test images per class: these tests are about files, not accuracy."""
    path = tmp_path_factory.mktemp("proto") / "quick.yaml"
    path.write_text("test_per_class: 30\nprobe_images: 100\n")
    return [*EVALUATE, "--config", str(path)]


@pytest.fixture(scope="module")
def whole_eval(uninterrupted, eval_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ew") / "e"
    proc = run_cli("evaluate", str(uninterrupted), "--out", str(out), *eval_args)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("point", ["student-epoch:4", "seed-done:1", "results-written:1"])
def test_evaluate_resumes_identically(point, uninterrupted, whole_eval, eval_args, tmp_path):
    out = tmp_path / "e"
    args = ["evaluate", str(uninterrupted), "--out", str(out), *eval_args]
    killed = run_cli(*args, env={"INFOUTIL_KILL_AT": point})
    assert killed.returncode == -9 and not out.exists()
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((out / "results.json").read_text())
    b = json.loads((whole_eval / "results.json").read_text())
    for key in ("evaluate_seconds",):  # wall-clock: the only field allowed to differ
        a.pop(key), b.pop(key)
    assert a == b
    _same_tree(out, whole_eval, skip=(*VARYING_FILES, "results.json", COMPLETE))


def test_incomplete_or_corrupted_sets_are_refused(uninterrupted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted, copy)
    png = next((copy / "images").rglob("*.png"))
    png.write_bytes(png.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserError, match="does not match its checksum"):
        load_distilled(copy)
    (copy / COMPLETE).unlink()
    with pytest.raises(UserError, match="incomplete"):
        load_distilled(copy)


def test_a_second_run_on_the_same_output_stops_at_once(fmnist_teacher, tmp_path):
    """The first run is held at its first scored chunk, lock taken, until the second is done."""
    held = tmp_path / "held"
    env = dict(os.environ, INFOUTIL_CACHE=str(tmp_path / "c"))
    env["INFOUTIL_PAUSE_AT"] = f"shapley-chunk:{held}"
    out = tmp_path / "busy"
    args = [*DISTILL, "--teacher", str(fmnist_teacher), "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "infoutil", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300  # only a bound on a broken run; nothing races it
        while not held.exists():
            assert time.time() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = run_cli(*args, env={"INFOUTIL_CACHE": str(tmp_path / "c2")})
        assert_one_line_error(second, "another infoutil run", str(first.pid))
        assert not (tmp_path / "c2" / "scores").exists()  # it stopped before any work
    finally:
        held.unlink(missing_ok=True)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    load_distilled(out)


def test_small_classes_fall_back_with_a_warning(tmp_path, data_root):
    """A class with fewer images than --candidates-per-class uses all it has and says so."""
    import zipfile

    from tests.test_data import _write_tree

    sample = {}
    for split in ("train", "test"):
        with zipfile.ZipFile(data_root / "cifar10" / f"{split}.zip") as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
            pick = []
            for c in ("airplane", "cat"):
                pick += [n for n in names if n.startswith(f"{split}/{c}/")][:6]
            sample[split] = [(n, zf.read(n)) for n in pick]
    root = _write_tree(tmp_path / "tiny", sample)
    info = DatasetInfo(
        f"imagefolder:{root}",
        ("airplane", "cat"),
        32,
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    save_teacher_epoch(
        tmp_path / "t",
        create_model("convnet3", info),
        {"arch": "convnet3", "dataset": info.to_dict(), "epoch": 1},
    )
    proc = run_cli(
        "distill",
        "--method",
        "rded",
        "--dataset",
        f"imagefolder:{root}",
        "--teacher",
        str(tmp_path / "t"),
        "--ipc",
        "2",
        "--candidates-per-class",
        "300",
        "--out",
        str(tmp_path / "d"),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: class 'airplane' has only 6 images" in proc.stderr
    assert len(load_distilled(tmp_path / "d")) == 4


def test_a_teacher_that_outputs_nan_is_refused(tmp_path, data_root):
    from infoutil.data.fashion_mnist import FASHION_MNIST_CLASSES

    info = DatasetInfo("fashion-mnist", FASHION_MNIST_CLASSES, 28, 1, (0.286,), (0.353,))
    model = create_model("convnet3", info)
    with torch.no_grad():
        model.net.fc.bias[3] = float("nan")
    save_teacher_epoch(
        tmp_path / "nan", model, {"arch": "convnet3", "dataset": info.to_dict(), "epoch": 1}
    )
    proc = run_cli(
        *_distill_args(tmp_path / "nan", tmp_path / "out"),
        env={"INFOUTIL_CACHE": str(tmp_path / "c")},
    )
    assert_one_line_error(proc, "NaN or Inf")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_config_files_name_the_bad_key(fmnist_teacher, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: 2\ninformativeness:\n  grid: 4\n  alpah: 2.0\n")
    proc = run_cli(
        *fmnist_distill(fmnist_teacher),
        "--config",
        str(bad),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(proc, "informativeness.alpah", "unknown key")
    bad.write_text("ipc: 2\ninformativeness:\n  budget: lots\n")
    proc = run_cli(
        *fmnist_distill(fmnist_teacher),
        "--config",
        str(bad),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(proc, "informativeness.budget")
    bad.write_text("epochs: 3\ntemprature: 4\n")
    proc = run_cli("evaluate", str(tmp_path), "--config", str(bad), "--out", str(tmp_path / "e"))
    assert_one_line_error(proc, "temprature")
    assert not (tmp_path / "o").exists()


def _read_only_runner(tmp_path: Path) -> list[str] | None:
    """A prefix that runs a command with ``tmp_path/ro`` mounted read-only, or None."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return []
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            f"mount -t tmpfs -o ro tmpfs {ro} && ! touch {ro}/x",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        return None
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        f'mount -t tmpfs -o ro tmpfs {ro} && exec "$@"',
        "sh",
    ]


def test_an_output_on_a_read_only_directory(fmnist_teacher, tmp_path):
    prefix = _read_only_runner(tmp_path)
    if prefix is None:
        pytest.skip("cannot make a read-only directory here (root without user namespaces)")
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "infoutil",
        *_distill_args(fmnist_teacher, tmp_path / "ro" / "out"),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=dict(os.environ, INFOUTIL_CACHE=str(tmp_path / "c")),
    )
    assert_one_line_error(proc, "ro/out", "writable")


def test_a_full_disk_mid_write_leaves_nothing(fmnist_teacher, uninterrupted, tmp_path):
    """RLIMIT_FSIZE makes writes past 40 KB fail with EFBIG, as a full disk would."""
    cache = tmp_path / "c"
    shutil.copytree(Path(os.environ["INFOUTIL_CACHE"]), cache, dirs_exist_ok=True)
    warm = run_cli(
        *_distill_args(fmnist_teacher, tmp_path / "warm"), env={"INFOUTIL_CACHE": str(cache)}
    )  # scores cached: the write is what fails
    assert warm.returncode == 0

    def limit():
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "infoutil", *_distill_args(fmnist_teacher, out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, INFOUTIL_CACHE=str(cache)),
        preexec_fn=limit,
    )
    assert_one_line_error(proc, "full")
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_pickle_that_runs_code_is_refused(tmp_path, data_root):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    proc = run_cli(
        "teacher",
        "import",
        str(evil),
        "--arch",
        "convnet3",
        "--dataset",
        "fashion-mnist",
        "--out",
        str(tmp_path / "t"),
    )
    assert_one_line_error(proc, "refused to load")
    assert not marker.exists() and not (tmp_path / "t").exists()
    # a pickled checkpoint is never loaded directly as a teacher either
    proc = run_cli(*_distill_args(evil, tmp_path / "o"))
    assert_one_line_error(proc, "import it first")
    assert not marker.exists()


def test_a_plain_state_dict_imports(fmnist_teacher, tmp_path, data_root):
    from infoutil.io.checkpoint import load_teacher

    t = load_teacher(fmnist_teacher)
    torch.save(
        {"model": {f"module.{k}": v for k, v in t.model.net.state_dict().items()}},
        tmp_path / "plain.pth",
    )
    proc = run_cli(
        "teacher",
        "import",
        str(tmp_path / "plain.pth"),
        "--arch",
        "convnet3",
        "--dataset",
        "fashion-mnist",
        "--out",
        str(tmp_path / "imported"),
    )
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(
        load_teacher(tmp_path / "imported").model.net.fc.weight, t.model.net.fc.weight
    )
