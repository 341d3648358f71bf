"""Teacher training: one checkpoint per epoch, resumable after a kill, reproducible from a seed.

Every random draw of epoch ``e`` comes from a generator seeded by ``(seed, e)``, and the
optimizer state is saved with each epoch, so a run resumed from epoch ``e`` computes exactly
what an uninterrupted run computes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infoutil import distributed as dist_util
from infoutil.config import TeacherConfig, build_config
from infoutil.data import per_class_sample, subset
from infoutil.data.augment import random_crop_flip, to_float
from infoutil.data.sources import load_split_of
from infoutil.errors import UserError
from infoutil.io.atomic import atomic_save_tensors, atomic_write_json, dumps_json
from infoutil.io.checkpoint import completed_epochs, epoch_paths, save_teacher_epoch
from infoutil.io.lock import output_lock
from infoutil.models import Classifier, create_model
from infoutil.runtime import (
    compiled_or_refused,
    fault_point,
    generator,
    is_main_process,
    progress,
    resolve_device,
)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only, not on norms or biases (RDED's ``get_parameters``)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_lr(base: float, step: int, total: int, floor: float = 0.0) -> float:
    """Cosine from ``base`` down to ``floor * base`` over ``total`` steps."""
    t = min(step / max(total, 1), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _log_line(out_dir: Path, row: dict) -> None:
    """One line of ``train_log.jsonl``: an epoch's numbers, or a change to the run."""
    with open(out_dir / "train_log.jsonl", "ab") as f:
        f.write(dumps_json(row).replace(b"\n", b"") + b"\n")


def _state_path(out_dir: Path, epoch: int) -> Path:
    return out_dir / f"optimizer_{epoch:04d}.safetensors"


def _save_optimizer(out_dir: Path, epoch: int, model, opt) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf
    atomic_save_tensors(_state_path(out_dir, epoch), tensors)


def _load_optimizer(out_dir: Path, epoch: int, model, opt) -> None:
    from safetensors.torch import load_file

    path = _state_path(out_dir, epoch)
    if not path.is_file():
        raise UserError(
            f"{path}: optimizer state for epoch {epoch} is missing; cannot resume "
            "exactly (start again with another --out)"
        )
    tensors = load_file(str(path))
    for name, p in model.named_parameters():
        key = f"momentum.{name}"
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(p.device)


def train_teacher(
    cfg: TeacherConfig,
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    cache_dir: str | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    stop_after: int | None = None,
    reschedule: bool = False,
    device: str | None = None,
) -> dict:
    """Train ``cfg.arch`` on ``cfg.dataset``; returns the last epoch's metadata.

    ``stop_after`` ends the run after that many epochs of this invocation (the schedule still
    spans ``cfg.epochs``), so a run can be continued later with ``resume``.

    ``reschedule`` lets a resumed run change ``epochs`` only (a budget that shrank or grew):
    the cosine is recomputed over the new total from the next step on, and the change is
    written to ``train_log.jsonl``. The result is then not the bytes of an uninterrupted run.
    """
    out_dir = Path(out_dir)
    train = load_split_of(cfg, "train", data_root, cache_dir)
    test = load_split_of(cfg, "test", data_root, cache_dir)
    if cfg.train_per_class is not None:
        train = subset(
            train,
            per_class_sample(train.targets, train.info.num_classes, cfg.train_per_class, cfg.seed),
        )
    if cfg.test_per_class is not None:
        test = subset(
            test, per_class_sample(test.targets, test.info.num_classes, cfg.test_per_class, 0)
        )
    info = train.info
    ctx = dist_util.context()
    lock = output_lock(out_dir) if ctx.is_main else _null()
    with lock:
        done = completed_epochs(out_dir)
        config_path = out_dir / "config.json"
        if done and not resume:
            raise UserError(
                f"{out_dir}: already holds teacher checkpoints (epochs {done[0]}.."
                f"{done[-1]}); pass --resume to continue, or choose another --out"
            )
        rescheduled = None
        if reschedule and not (resume and done):
            raise UserError(f"{out_dir}: --reschedule changes a run in progress; add --resume")
        if resume and config_path.is_file():
            saved = build_config(
                TeacherConfig, json.loads(config_path.read_text()), str(config_path)
            )
            only_epochs = saved != cfg and saved.model_copy(update={"epochs": cfg.epochs}) == cfg
            if reschedule and only_epochs:
                if cfg.epochs <= done[-1]:
                    raise UserError(
                        f"{out_dir}: --reschedule to {cfg.epochs} epochs, but epoch "
                        f"{done[-1]} is already done; choose more epochs"
                    )
                rescheduled = {
                    "rescheduled_after_epoch": done[-1],
                    "from_epochs": saved.epochs,
                    "to_epochs": cfg.epochs,
                }
            elif saved != cfg:
                if only_epochs:
                    hint = (
                        f" (only --epochs differs, {saved.epochs}: add --reschedule to change it)"
                    )
                elif reschedule:
                    hint = " (only --epochs may change, with --reschedule)"
                else:
                    hint = ""
                raise UserError(
                    f"{out_dir}: --resume with a different config than the run "
                    f"that wrote it{hint}; use the same options or another --out"
                )
        if ctx.is_main:
            if rescheduled is not None:
                # the log first: a kill between the two leaves the change recorded, not silent
                _log_line(out_dir, rescheduled)
            atomic_write_json(config_path, cfg.model_dump())

        torch.manual_seed(cfg.seed)
        compute = resolve_device(device)
        model: Classifier = create_model(cfg.arch, info).to(compute)
        opt = torch.optim.SGD(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
        )
        start = 0
        if resume and done:
            from infoutil.io.checkpoint import load_teacher

            start = done[-1]
            model.load_state_dict(
                load_teacher(out_dir / f"epoch_{start:04d}.safetensors").model.state_dict()
            )
            _load_optimizer(out_dir, start, model, opt)
        if start >= cfg.epochs:
            return json.loads(epoch_paths(out_dir, start)[1].read_text())
        ddp_model = ctx.wrap(model)
        eval_model: torch.nn.Module = model
        if cfg.compile:
            ddp_model = compiled_or_refused(ddp_model, "the teacher")
            eval_model = compiled_or_refused(model, "the teacher")

        n = len(train)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        meta: dict = {}
        last = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
        for epoch in range(start, last):
            t0 = time.perf_counter()
            model.train()
            g = generator("teacher", cfg.seed, epoch)
            order = torch.randperm(n, generator=g)
            bar = progress(
                range(steps_per_epoch),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                enabled=progress_bar,
            )
            loss_sum = 0.0
            for step in bar:
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = to_float(train.get_batch(idx))
                y = train.targets[idx]
                if cfg.augment:
                    x = random_crop_flip(x, pad=max(1, info.image_size // 8), g=g)
                x, y = ctx.shard_batch(x, y)
                x, y = x.to(compute), y.to(compute)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, epoch * steps_per_epoch + step, total_steps)
                loss = F.cross_entropy(ddp_model(x), y, reduction="sum") * ctx.world_size / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                fault_point("teacher-step")
                loss_sum += float(loss.detach()) / ctx.world_size
                bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}")
            bar.close()
            train_seconds = time.perf_counter() - t0
            acc = ctx.sharded_accuracy(eval_model, test, batch_size=cfg.batch_size)
            meta = {
                "arch": cfg.arch,
                "dataset": info.to_dict(),
                "epoch": epoch + 1,
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "test_accuracy": round(acc, 6),
                "train_images": n,
                "config": cfg.model_dump(),
                # the images this teacher never saw (None: the whole training set)
                "validation": train.validation,
            }
            if ctx.is_main:
                # optimizer state first: once the epoch's JSON exists, resuming from it works
                _save_optimizer(out_dir, epoch + 1, model, opt)
                meta = save_teacher_epoch(out_dir, model, meta)
                _state_path(out_dir, epoch).unlink(missing_ok=True)  # the previous epoch's
                seconds = time.perf_counter() - t0
                rate = n / train_seconds
                _log_line(
                    out_dir,
                    {
                        "epoch": epoch + 1,
                        "test_accuracy": acc,
                        "seconds": round(seconds, 2),
                        "train_seconds": round(train_seconds, 2),
                        "train_images_per_second": round(rate, 1),
                        "loss": loss_sum / steps_per_epoch,
                    },
                )
                if is_main_process() and progress_bar:
                    print(
                        f"epoch {epoch + 1}/{cfg.epochs}: test accuracy {acc:.4f}, "
                        f"{seconds:.0f}s (training {rate:.0f} images/s)",
                        flush=True,
                    )
            ctx.barrier()
        return meta


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
