"""An output directory's life: staged as ``OUT.partial``, checked, renamed into place.

``OUT`` is either absent or complete: a run writes ``OUT.partial``, lists every file's sha256
in ``COMPLETE.json`` last, and renames it into place. ``--overwrite`` replaces only what this
proves to be a finished output of the same command: a folder whose ``config.json`` names that
command and whose files are exactly those its ``COMPLETE.json`` lists. Anything else in the
folder (a user's notes, another run, this run's own teacher) makes it refuse, and the old
output is moved aside, not deleted, until the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from infoutil.atomic import atomic_write_json, sha256_file
from infoutil.errors import UserError
from infoutil.io.lock import output_lock

COMPLETE = "COMPLETE.json"
DISTILLED_FORMAT = "infoutil-distilled/1"
VARYING_FILES = ("run_stats.json",)
# drawn beside a finished output from its own files (an evaluation's curves): replaceable
DERIVED_FILES = ("curve.png",)
KINDS = {"distill": "distilled set", "evaluate": "evaluation"}


class AlreadyFinished(Exception):
    """``--resume`` found ``out`` finished by the same command with the same options: there is
    nothing left to do (callers report it and return what is there)."""

    def __init__(self, out: Path):
        self.out = out
        super().__init__(f"{out}: already finished with these options; nothing to resume")


def staging_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _command_of(folder: Path) -> str | None:
    """The command whose ``config.json`` is in ``folder``, or None."""
    try:
        return json.loads((folder / "config.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def not_replaceable(out: Path, command: str) -> str | None:
    """Why ``out`` is not a finished output of ``command`` that may be replaced; None if it
    is one (or an empty folder). Nothing is read but names and two small JSON files."""
    if not out.is_dir():
        return "it is a file, not an output folder"
    files = sorted(p for p in out.rglob("*") if not p.is_dir())
    if not files:
        return None
    kind = KINDS.get(command, command)
    if not (out / COMPLETE).is_file():
        first = files[0].relative_to(out)
        return f"it holds {first} and no {COMPLETE}, so it is not a finished {kind}"
    if (found := _command_of(out)) != command:
        what = f"a finished {KINDS.get(found, found)}" if found else "not an infoutil output"
        return f"it is {what}, not a {kind}"
    try:
        listed = set(json.loads((out / COMPLETE).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {COMPLETE} is unreadable"
    for f in files:
        rel = str(f.relative_to(out))
        if rel not in listed and rel not in (COMPLETE, *VARYING_FILES, *DERIVED_FILES):
            return f"it holds {rel}, which the {kind} did not write"
    return None


def refuse_inputs_inside(out: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an ``out`` that is, or contains, one of this run's inputs."""
    targets = [out.resolve(), staging_dir(out).resolve()]
    for item in inputs:
        if item is None:
            continue
        p = Path(item).expanduser().resolve()
        for t in targets:
            if p == t or t in p.parents:
                raise UserError(
                    f"{out}: --out holds {item}, an input of this run; choose an --out "
                    "folder of its own"
                )


def prepare_output(
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    config: dict,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Check what is at ``out`` and return the staging directory to write into.

    ``OUT.partial`` left by an interrupted run of the same command is continued with
    ``resume`` (when its ``config.json`` matches) and discarded with ``overwrite``; with
    ``resume``, a finished ``out`` of the same command and options raises
    :class:`AlreadyFinished`; anything else there stops the run before it starts.
    """
    command = config["command"]
    stage = staging_dir(out)
    refuse_inputs_inside(out, inputs)
    if resume and not overwrite and _finished_with(out, config):
        raise AlreadyFinished(out)
    if out.exists():
        why = not_replaceable(out, command)
        empty = why is None and out.is_dir() and not any(out.iterdir())
        if not overwrite and not empty:
            what = "a finished output" if (out / COMPLETE).is_file() else "something"
            if resume and (out / COMPLETE).is_file():
                what += " made with other options"
            raise UserError(
                f"{out}: already holds {what}; pass --overwrite to replace a finished output, "
                "or choose another --out"
            )
        if why is not None:
            raise UserError(
                f"{out}: --overwrite replaces only a finished {KINDS.get(command, command)}, "
                f"and {why}; move it away or choose another --out"
            )
    if stage.exists():
        if _command_of(stage) != command:
            raise UserError(
                f"{stage}: not an interrupted infoutil {command} run (its config.json does "
                "not say so); move it away or choose another --out"
            )
        if overwrite:
            shutil.rmtree(stage)  # an unfinished run of this command: the user restarts it
        elif not resume:
            raise UserError(
                f"{stage}: an interrupted run left this; pass --resume to continue "
                "it, or --overwrite to start again"
            )
        # compared as JSON: a tuple in the options reads back as a list
        elif json.loads((stage / "config.json").read_text()) != json.loads(json.dumps(config)):
            raise UserError(
                f"{stage}: --resume with different options than the "
                "interrupted run; use the same options, or --overwrite"
            )
    try:
        stage.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"{out}: cannot create the output here ({err.strerror}); choose a writable --out"
        ) from err
    atomic_write_json(stage / "config.json", config)
    return stage


def open_output(
    stack: contextlib.ExitStack,
    ctx,
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    config: dict,
    inputs: Iterable[str | os.PathLike | None] = (),
    progress: bool = True,
) -> Path | None:
    """Every rank's start of a run that writes ``out``: rank 0 of ``ctx`` (a
    ``distributed.Context``) takes the lock (held until ``stack`` closes) and prepares the
    stage; then every rank gets the staging directory, or None where ``--resume`` found ``out``
    finished, or raises rank 0's refusal, so that no rank waits at a barrier for one that
    stopped."""
    verdict = None  # rank 0's word: None (go on), ("finished",) or ("refused", message)
    stage = staging_dir(out)
    if ctx.is_main:
        try:
            stack.enter_context(output_lock(out))
            stage = prepare_output(
                out, resume=resume, overwrite=overwrite, config=config, inputs=inputs
            )
        except AlreadyFinished as done:
            verdict = ("finished",)
            if progress:
                print(done, flush=True)
        except UserError as err:
            verdict = ("refused", str(err))
    verdict = ctx.broadcast_object(verdict)
    if verdict is None:
        return stage
    if verdict[0] == "finished":
        return None
    raise UserError(verdict[1])


def _finished_with(out: Path, config: dict) -> bool:
    """Whether ``out`` is a finished output of ``config``'s command, run with ``config``."""
    if not (out / COMPLETE).is_file() or not_replaceable(out, config["command"]) is not None:
        return False
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == json.loads(json.dumps(config))  # as JSON: tuples read back as lists


def finish_output(stage: Path, out: Path, *, format: str = DISTILLED_FORMAT) -> None:
    """Write the completion marker, then put the staging directory in ``out``'s place.

    A previous output at ``out`` is checked again (nothing may have been added to it since
    the start), moved aside, and deleted only once the new one is in place."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    sums = {str(p.relative_to(stage)): sha256_file(p) for p in files if p.name not in VARYING_FILES}
    atomic_write_json(stage / COMPLETE, {"format": format, "sha256": sums})
    old = None
    if out.exists():
        why = not_replaceable(out, _command_of(stage) or "")
        if why is not None:
            raise UserError(
                f"{out}: changed during the run, and {why}; the new output is in {stage}"
            )
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
