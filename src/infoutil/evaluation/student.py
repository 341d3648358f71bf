"""Train a fresh student on a distilled set under a named protocol (anchors.md §1.6).

Per step: ShufflePatches(factor) -> RandomResizedCrop(scale (1/factor, 1)) -> flip -> CutMix,
then the targets, in one of three label regimes: the teacher relabels the mixed batch online
(``labels="online"``, protocol ``rded``), the stored per-patch labels are mixed by area
(``labels="static"``, no per-patch views), or the set's hard labels, one-hot and mixed by
area (``labels="hard"``: no teacher at training time). The loss is
KL(softmax(target/T) || softmax(student/T)) with batch-mean reduction, without a T^2 factor,
as RDED; with hard labels T is 1, so it is the cross-entropy. ``steps`` fixes the optimizer
steps instead of the epochs, so that budgets compare across IPC. AdamW with no decay on
norms and biases; the LR follows a cosine per epoch down to
``lr_floor x lr``. Every draw of epoch ``e`` comes from a generator seeded by (seed, e), and the
model and optimizer state are saved as training goes, so a killed run resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from infoutil.atomic import atomic_save_tensors
from infoutil.config import ProtocolConfig
from infoutil.data.augment import (
    cutmix,
    horizontal_flip,
    random_resized_crop,
    shuffle_patches,
    to_float,
)
from infoutil.data.base import ImageDataset, per_class_sample, subset
from infoutil.distributed import Context
from infoutil.errors import UserError
from infoutil.io.distilled import DistilledSet
from infoutil.models import create_model, inference_batch
from infoutil.runtime import (
    compiled_or_refused,
    fault_point,
    generator,
    precision_autocast,
    progress,
)
from infoutil.training.teacher import cosine_lr, param_groups

# RDED's AdamW learning rate per student (argument.py); 1e-3 for every other model.
STUDENT_LR = {"mobilenetv2": 2.5e-3}


def rded_batch_size(ipc: int, num_classes: int, num_images: int) -> int:
    """RDED's rule: 10 / 50 / 100 for IPC below 10 / below 50 / above, x2 for 100+ classes,
    capped at the number of images."""
    base = 10 if ipc < 10 else 50 if ipc < 50 else 100
    if num_classes >= 100:
        base *= 2
    return max(1, min(base, num_images))


def batch_size(protocol: ProtocolConfig, distilled: DistilledSet) -> int:
    """The protocol's batch size, else RDED's rule for the set's IPC and class count."""
    n, classes = len(distilled), distilled.info.num_classes
    ipc = distilled.ipc or max(1, n // classes)
    return protocol.batch_size or rded_batch_size(ipc, classes, n)


def student_epochs(protocol: ProtocolConfig, steps_per_epoch: int) -> int:
    """The epochs a student trains: the protocol's, or as many as its ``steps`` budget of
    optimizer steps reaches (the last one cut short where the budget ends inside it)."""
    if protocol.steps is None:
        return protocol.epochs
    return max(1, math.ceil(protocol.steps / steps_per_epoch))


def student_steps(protocol: ProtocolConfig, steps_per_epoch: int) -> int:
    """The optimizer steps a student takes: its budget exactly, or whole epochs of them."""
    if protocol.steps is not None:
        return protocol.steps
    return protocol.epochs * steps_per_epoch


def eval_epochs(epochs: int, points: int) -> list[int]:
    """1-based epochs at which the test set is measured; always includes the last."""
    return sorted({max(1, round(epochs * i / points)) for i in range(1, points + 1)} | {epochs})


@dataclass
class StudentRun:
    seed: int
    accuracy: float  # the last epoch's
    curve: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the trained student (None for a finished seed read back)


def _autoaugment(images_uint8: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    try:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy
    except ImportError as err:
        raise UserError("autoaugment needs torchvision: pip install 'infoutil[vision]'") from err
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
    try:
        aa = AutoAugment(AutoAugmentPolicy.IMAGENET)
        x = images_uint8 if images_uint8.shape[1] == 3 else images_uint8.expand(-1, 3, -1, -1)
        out = torch.stack([aa(img) for img in x])
        return out[:, : images_uint8.shape[1]]
    finally:
        torch.random.set_rng_state(torch_state)


def soft_targets_static(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image soft label from stored per-patch logits: the patches' mean (equal areas)."""
    return torch.softmax(logits / temperature, -1).mean(1)


def train_student(
    distilled: DistilledSet,
    test: ImageDataset,
    teacher: torch.nn.Module | None,
    arch: str,
    protocol: ProtocolConfig,
    seed: int,
    *,
    state_path: Path | None = None,
    ctx: Context | None = None,
    progress_bar: bool = True,
    device: torch.device | None = None,
) -> StudentRun:
    ctx = ctx or Context()
    if device is None:  # train where the teacher lives
        device = next(teacher.parameters()).device if teacher is not None else torch.device("cpu")
    info = distilled.info
    n = len(distilled)
    ipc = distilled.ipc or max(1, n // info.num_classes)
    del ipc  # the batch size follows RDED's rule from it (batch_size)
    if protocol.labels == "static" and distilled.logits is None:
        raise UserError(f"{distilled.path}: has no stored labels; use the online protocol")
    if protocol.labels == "online" and teacher is None:
        raise UserError("online relabelling needs a teacher")
    torch.manual_seed(seed)
    model = create_model(arch, info).to(device)
    eval_batch = protocol.eval_batch_size or inference_batch(model, info)
    lr = protocol.lr or STUDENT_LR.get(arch, 1e-3)
    opt = torch.optim.AdamW(param_groups(model, protocol.weight_decay), lr=lr, betas=(0.9, 0.999))
    bs = batch_size(protocol, distilled)
    steps = math.ceil(n / bs)
    protocol = protocol.model_copy(update={"epochs": student_epochs(protocol, steps)})
    # hard labels: cross-entropy with the (CutMix-mixed) one-hot targets, no temperature
    T = 1.0 if protocol.labels == "hard" else protocol.temperature
    if protocol.labels == "hard":
        targets_static = F.one_hot(distilled.labels, info.num_classes).to(torch.float32)
    elif distilled.logits is not None:
        targets_static = soft_targets_static(distilled.logits, T)
    else:
        targets_static = None
    checkpoints = eval_epochs(protocol.epochs, protocol.eval_points)
    # The curve's intermediate points use a fixed, class-balanced probe of the test set; the
    # reported number is the last epoch's accuracy on the whole test set.
    probe = subset(
        test,
        per_class_sample(
            test.targets, info.num_classes, max(1, protocol.probe_images // info.num_classes), 0
        ),
    )
    save_every = max(1, protocol.epochs // 30)
    run = StudentRun(seed, float("nan"))
    start = 0
    if state_path is not None and state_path.is_file():
        start, run.curve = _load_state(state_path, model, opt)
    ddp_model = ctx.wrap(model)
    relabel = teacher
    if protocol.compile:
        ddp_model = compiled_or_refused(ddp_model, "the student")
        relabel = None if teacher is None else compiled_or_refused(teacher, "the teacher")
    bar = progress(
        total=protocol.epochs,
        initial=start,
        desc=f"student {arch} seed {seed}",
        unit="epoch",
        enabled=progress_bar,
    )
    batches = _Batches(distilled, protocol, targets_static, ctx, device)
    for epoch in range(start, protocol.epochs):
        g = generator("student", seed, epoch)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, epoch, protocol.epochs, protocol.lr_floor)
        model.train()
        order = torch.randperm(n, generator=g)
        loss_sum = 0.0
        # a steps budget ends inside the last epoch where it is not a whole number of epochs
        taken = min(steps, student_steps(protocol, steps) - epoch * steps)
        for step in range(taken):
            idx = order[step * bs : (step + 1) * bs]
            x, target = batches.make(idx, g, relabel)
            with precision_autocast(protocol.precision, device.type):
                logits = ddp_model(x)
            log_p = F.log_softmax(logits.float() / T, 1)
            # batch-mean KL over the global batch: each rank's share, summed by DDP's average
            loss = F.kl_div(log_p, target, reduction="sum") * ctx.world_size / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) / ctx.world_size
        point = {"epoch": epoch + 1, "train_loss": round(loss_sum / taken, 6)}
        if epoch + 1 == protocol.epochs:
            point["test_accuracy"] = ctx.sharded_accuracy(model, test, eval_batch)
        elif epoch + 1 in checkpoints:
            point["probe_accuracy"] = ctx.sharded_accuracy(model, probe, eval_batch)
        run.curve.append(point)
        fault_point("student-epoch")
        bar.update(1)
        shown = point.get("test_accuracy", point.get("probe_accuracy"))
        if shown is not None:
            bar.set_postfix(acc=f"{shown:.4f}")
        last = epoch + 1 == protocol.epochs
        if state_path is not None and ctx.is_main and (epoch + 1) % save_every == 0 and not last:
            _save_state(state_path, epoch + 1, run.curve, model, opt)
        ctx.barrier()
    bar.close()
    run.accuracy = run.curve[-1]["test_accuracy"]
    run.model = model
    return run


@dataclass
class _Batches:
    """A training batch as the protocol makes it: augmented images and their targets."""

    distilled: DistilledSet
    protocol: ProtocolConfig
    targets_static: torch.Tensor | None
    ctx: Context
    device: torch.device

    def make(self, idx: torch.Tensor, g: torch.Generator, relabel) -> tuple[torch.Tensor, ...]:
        protocol, factor = self.protocol, self.distilled.factor
        raw = self.distilled.images[idx]
        if protocol.autoaugment:
            raw = _autoaugment(raw, g)
        x = to_float(raw)
        # the per-patch views need labels made for the view: the teacher's, or a hard label
        per_view = protocol.labels in ("online", "hard")
        if protocol.shuffle_patches and per_view:
            x = shuffle_patches(x, factor, g)
        if protocol.random_resized_crop and per_view:
            x = random_resized_crop(x, g, scale=(1.0 / factor, 1.0))
        if protocol.flip:
            x = horizontal_flip(x, g)
        if protocol.cutmix:
            x, perm, kept = cutmix(x, g)
        else:
            perm, kept = torch.arange(len(idx)), 1.0
        if protocol.labels == "online":
            x = self.ctx.shard_batch(x).to(self.device)
            with torch.no_grad(), precision_autocast(protocol.precision, self.device.type):
                target = torch.softmax(relabel(x).float() / protocol.temperature, 1)
            return x, target
        p = self.targets_static[idx]
        x, target = self.ctx.shard_batch(x, kept * p + (1 - kept) * p[perm])
        return x.to(self.device), target.to(self.device)


def _save_state(path: Path, epoch: int, curve: list[dict], model, opt) -> None:
    import json

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): k for k, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{key}.{names[id(p)]}"] = torch.as_tensor(value)
    atomic_save_tensors(path, tensors, {"epoch": str(epoch), "curve": json.dumps(curve)})


def _load_state(path: Path, model, opt) -> tuple[int, list[dict]]:
    import json

    from safetensors import safe_open

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"{path}: unreadable resume state ({err}); start this evaluation again"
        ) from err
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in model.named_parameters():
        state = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            t = tensors.get(f"opt.{key}.{name}")
            if t is not None:
                state[key] = t.clone() if key == "step" else t.to(p.device)
        if state:
            opt.state[p] = state
    return int(meta["epoch"]), json.loads(meta["curve"])
