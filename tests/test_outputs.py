"""--overwrite replaces only a finished output of the same kind; teacher train writes only into
its own folder. In every case the files that are not the run's own survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infoutil.config import DistillConfig, ProtocolConfig, TeacherConfig
from infoutil.errors import UserError
from infoutil.evaluation.run import evaluate
from infoutil.io.distilled import load_distilled
from infoutil.methods import distill
from infoutil.runtime import RunContext
from infoutil.training.teacher import train_teacher
from tests.helpers import assert_one_line_error, fmnist_distill, quiet, run_cli

RANDOM = DistillConfig(method="random", dataset="fashion-mnist", ipc=1)
QUICK = ProtocolConfig(epochs=1, test_per_class=3, eval_points=1)


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's notes and data, in the folder and below it."""
    files = {"notes.txt": b"my notes\n", "sub/data.csv": b"a,b\n1,2\n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _survive(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


@pytest.fixture(scope="module")
def finished_set(fmnist_teacher, data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "random-ipc1"
    distill(RANDOM, fmnist_teacher, out, run=quiet(data_root))
    return out


def test_overwrite_refuses_a_folder_of_other_files(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "mine"
    files = _user_files(out)
    proc = run_cli(*fmnist_distill(fmnist_teacher, "--method", "random", "--ipc", "1", "--out",
                                   str(out), "--overwrite", "-q"))  # fmt: skip
    assert_one_line_error(proc, "--overwrite replaces only a finished distilled set", "notes.txt")
    _survive(out, files)
    assert not (tmp_path / "mine.partial").exists()


def test_overwrite_refuses_an_out_that_holds_the_runs_teacher(fmnist_teacher, data_root, tmp_path):
    runs = tmp_path / "runs"
    (runs / "t").mkdir(parents=True)
    for f in fmnist_teacher.iterdir():
        (runs / "t" / f.name).write_bytes(f.read_bytes())
    before = {p.name: p.read_bytes() for p in (runs / "t").iterdir()}
    with pytest.raises(UserError, match="an input of this run"):
        distill(RANDOM, runs / "t", runs, run=quiet(data_root), overwrite=True)
    assert {p.name: p.read_bytes() for p in (runs / "t").iterdir()} == before


def test_overwrite_replaces_a_finished_set_and_refuses_one_with_extra_files(
    finished_set, fmnist_teacher, data_root, tmp_path
):
    out = tmp_path / "set"
    for f in finished_set.rglob("*"):
        if f.is_file():
            (out / f.relative_to(finished_set)).parent.mkdir(parents=True, exist_ok=True)
            (out / f.relative_to(finished_set)).write_bytes(f.read_bytes())
    other = RANDOM.model_copy(update={"seed": 1})
    distill(other, fmnist_teacher, out, run=quiet(data_root), overwrite=True)
    assert load_distilled(out).manifest["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.lock"]  # old one gone
    files = _user_files(out)
    with pytest.raises(UserError, match="which the distilled set did not write"):
        distill(RANDOM, fmnist_teacher, out, run=quiet(data_root), overwrite=True)  # fmt: skip
    _survive(out, files)
    assert load_distilled(out).manifest["seed"] == 1


def test_overwrite_does_not_replace_an_output_of_another_kind(
    finished_set, fmnist_teacher, data_root, tmp_path
):
    ev = tmp_path / "eval"
    evaluate(finished_set, ev, protocol=QUICK, run=quiet(data_root))
    before = {str(p.relative_to(ev)): p.read_bytes() for p in ev.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="it is a finished evaluation, not a distilled set"):
        distill(RANDOM, fmnist_teacher, ev, run=quiet(data_root), overwrite=True)  # fmt: skip
    # evaluate refuses a folder with a stranger in it, and an out that holds its own set
    (ev / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt, which the evaluation did not write"):
        evaluate(finished_set, ev, protocol=QUICK, run=quiet(data_root), overwrite=True)
    with pytest.raises(UserError, match="an input of this run"):
        evaluate(finished_set, finished_set.parent, protocol=QUICK, run=quiet(data_root),
                 overwrite=True)  # fmt: skip
    after = {str(p.relative_to(ev)): p.read_bytes() for p in ev.rglob("*") if p.is_file()}
    assert after == {**before, "notes.txt": b"mine"}
    assert (finished_set / "COMPLETE.json").is_file()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_of_a_finished_output_is_a_no_op_and_other_options_are_refused(
    finished_set, fmnist_teacher, data_root, tmp_path, capsys
):
    """A script that runs every step with --resume goes on past the finished ones: the same
    options find the output finished and leave it as it is; other options are refused."""
    before = _tree(finished_set)
    loud = RunContext(data_root=str(data_root))
    assert distill(RANDOM, fmnist_teacher, finished_set, run=loud, resume=True) == finished_set
    assert "already finished with these options" in capsys.readouterr().out
    assert _tree(finished_set) == before
    other = RANDOM.model_copy(update={"seed": 1})
    with pytest.raises(UserError, match="a finished output made with other options"):
        distill(other, fmnist_teacher, finished_set, run=quiet(data_root), resume=True)
    ev = tmp_path / "eval"
    first = evaluate(finished_set, ev, protocol=QUICK, run=quiet(data_root))
    evaluated = _tree(ev)
    again = evaluate(finished_set, ev, protocol=QUICK, run=quiet(data_root), resume=True)
    assert again == json.loads(json.dumps(first)) and _tree(ev) == evaluated
    with pytest.raises(UserError, match="made with other options"):
        evaluate(finished_set, ev, protocol=QUICK, seeds=[1], run=quiet(data_root), resume=True)
    assert _tree(ev) == evaluated
    proc = run_cli(*fmnist_distill(fmnist_teacher, "--method", "random", "--ipc", "1", "--out",
                                   str(finished_set), "--resume"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "already finished with these options" in proc.stdout and _tree(finished_set) == before


def test_an_empty_folder_is_a_fine_out(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    distill(RANDOM, fmnist_teacher, out, run=quiet(data_root))
    load_distilled(out)


def test_a_folder_named_like_a_stage_is_not_taken_for_one(fmnist_teacher, data_root, tmp_path):
    out = tmp_path / "set"
    files = _user_files(tmp_path / "set.partial")
    with pytest.raises(UserError, match="not an interrupted infoutil distill run"):
        distill(RANDOM, fmnist_teacher, out, run=quiet(data_root), overwrite=True)  # fmt: skip
    _survive(tmp_path / "set.partial", files)


TINY_TEACHER = {"dataset": "fashion-mnist", "epochs": 1, "train_per_class": 5, "test_per_class": 2}


def test_teacher_train_refuses_a_folder_that_is_not_its_run(data_root, tmp_path):
    out = tmp_path / "t"
    files = _user_files(out)
    with pytest.raises(UserError, match="holds notes.txt, which no teacher run wrote"):
        train_teacher(TeacherConfig(**TINY_TEACHER), out, run=quiet(data_root))  # fmt: skip
    _survive(out, files)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]


@pytest.mark.parametrize(
    "change, message",
    [({"arch": "convnet99"}, "convnet99"), ({"lr": 1e6, "batch_size": 5}, "diverged")],
)
def test_a_failed_teacher_start_leaves_nothing(change, message, data_root, tmp_path):
    cfg = TeacherConfig(**{**TINY_TEACHER, **change})
    with pytest.raises(UserError, match=message):
        train_teacher(cfg, tmp_path / "t", run=quiet(data_root))
    assert list(tmp_path.iterdir()) == []  # no folder, no config.json, no lock


def test_a_teacher_run_records_its_learning_rate_and_probe(data_root, tmp_path):
    cfg = TeacherConfig(**{**TINY_TEACHER, "epochs": 2, "probe_images": 10})
    meta = train_teacher(cfg, tmp_path / "t", run=quiet(data_root))
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    assert saved["lr"] == 0.05  # the default at 28 px, written out
    log = [json.loads(x) for x in (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()]
    assert [("test_accuracy" in row, "probe_accuracy" in row) for row in log] == [
        (False, True),
        (True, True),
    ]
    assert meta["probe"] == {"split": "test", "images": 10, "accuracy": log[-1]["probe_accuracy"]}
    assert meta["test_accuracy"] == round(log[-1]["test_accuracy"], 6)
