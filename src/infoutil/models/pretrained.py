"""Published weights as teachers: torchvision's, timm's and RDED's files read onto our networks.

Nothing here needs torchvision or timm, and nothing unpickles code: ``.safetensors`` files are
read by safetensors, ``.pth``/``.pt``/``.bin`` by ``torch.load(weights_only=True)``, which
accepts tensors and plain containers only. A layout is a rule that renames the file's tensors
to ours; every tensor of ours must then be found once, with its shape, or the import is refused
in one line that names the tensor.

Class order and normalisation come with the weights (:func:`weights_classes`): ImageNet-1K's
1,000 wnids in torchvision's index order (the sorted wnids) with ImageNet's mean and std, or a
dataset's own order for weights trained on it (RDED normalises every dataset with ImageNet's
statistics; its class folders ``00000``... follow CIFAR's label order and, for the ImageNet
subsets, ImageNet's index order, which is the sorted wnids: the order infoutil loads).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from infoutil.data.base import DatasetInfo
from infoutil.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet1k_classes
from infoutil.errors import UserError

WNID = re.compile(r"^n\d{8}$")
LAYOUTS = ("auto", "infoutil", "torchvision", "timm", "rded")


def _first_line(err: Exception) -> str:
    """An exception's first line, whole (torch's reasons run over several sentences)."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, without running code from it."""
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path}: unreadable safetensors file ({err})") from err
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; download it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about protocols before refusing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused what the pickle would build
        raise UserError(
            f"{path}: refused to load: it holds pickled objects other than tensors, which could "
            f"run code (torch: {_first_line(err)})"
        ) from err
    except Exception as err:  # a truncated zip, a file that is not a torch save, ...
        raise UserError(
            f"{path}: cannot read it as a torch file; it may be truncated or not a weights "
            f"file: download it again (torch: {_first_line(err)})"
        ) from err
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):  # RDED, Lightning, others
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: expected a state dict of tensors")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    # DataParallel / DDP prefixes
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ---------------------------------------------------------------- layouts: their name -> ours


def _sub(rules: list[tuple[str, str]]) -> Callable[[str], str | None]:
    compiled = [(re.compile(f"^{a}$"), b) for a, b in rules]

    def rename(key: str) -> str | None:
        for pattern, repl in compiled:
            if pattern.match(key):
                return pattern.sub(repl, key)
        return None

    return rename


def _resnet_rule(key: str) -> str | None:
    """torchvision's (and timm's) ResNet names: conv1/bn1 stem, layerN.i, downsample, fc."""
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", key)
    if m:
        rest = m.group(3).replace("downsample.", "shortcut.")
        return f"net.layers.{int(m.group(1)) - 1}.{m.group(2)}.{rest}"
    return _sub([(r"conv1\.(.+)", r"net.stem.0.\1"), (r"bn1\.(.+)", r"net.stem.1.\1"),
                 (r"fc\.(.+)", r"net.fc.\1")])(key)  # fmt: skip


# our MobileNetV2: features[0:3] stem, features[3:20] the 17 inverted residuals, [20:23] head;
# an expanding block's layers are block.{0 expand, 1 bn, 3 depthwise, 4 bn, 6 project, 7 bn},
# the first (no expansion) block's block.{0 depthwise, 1 bn, 3 project, 4 bn}
_MBV2_STAGE_SIZES = (1, 2, 3, 4, 3, 3, 1)


def _torchvision_mobilenet_rule(key: str) -> str | None:
    m = re.match(r"^features\.(\d+)\.(.+)$", key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i == 0:
            return _sub([(r"0\.(.+)", r"net.features.0.\1"), (r"1\.(.+)", r"net.features.1.\1")])(
                rest
            )
        if i == 18:
            return _sub([(r"0\.(.+)", r"net.features.20.\1"), (r"1\.(.+)", r"net.features.21.\1")])(
                rest
            )
        plain = {"conv.0.0": 0, "conv.0.1": 1, "conv.1": 3, "conv.2": 4}
        expanding = {"conv.0.0": 0, "conv.0.1": 1, "conv.1.0": 3, "conv.1.1": 4,
                     "conv.2": 6, "conv.3": 7}  # fmt: skip
        layer, _, param = rest.rpartition(".")
        index = (plain if i == 1 else expanding).get(layer)
        return None if index is None else f"net.features.{i + 2}.block.{index}.{param}"
    return _sub([(r"classifier\.1\.(.+)", r"net.fc.\1")])(key)


def _timm_mobilenet_rule(key: str) -> str | None:
    m = re.match(r"^blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)$", key)
    if m:
        stage, i, layer, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        flat = sum(_MBV2_STAGE_SIZES[:stage]) + i
        names = (
            {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}
            if stage == 0
            else {"conv_pw": 0, "bn1": 1, "conv_dw": 3, "bn2": 4, "conv_pwl": 6, "bn3": 7}
        )
        return (
            None if layer not in names else f"net.features.{flat + 3}.block.{names[layer]}.{param}"
        )
    return _sub([(r"conv_stem\.(.+)", r"net.features.0.\1"), (r"bn1\.(.+)", r"net.features.1.\1"),
                 (r"conv_head\.(.+)", r"net.features.20.\1"),
                 (r"bn2\.(.+)", r"net.features.21.\1"),
                 (r"classifier\.(.+)", r"net.fc.\1")])(key)  # fmt: skip


def _rded_convnet_rule(model: torch.nn.Module) -> Callable[[str], str | None]:
    """RDED's ConvNet keeps ModuleLists ``layers.conv``, ``layers.norm`` and a ``classifier``;
    ours is one Sequential, so the d-th conv and norm are found by position."""
    convs = [n for n, m in model.net.features.named_children() if isinstance(m, torch.nn.Conv2d)]
    norms = [
        n
        for n, m in model.net.features.named_children()
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm)
    ]

    def rename(key: str) -> str | None:
        m = re.match(r"^layers\.(conv|norm)\.(\d+)\.(.+)$", key)
        if m:
            where = convs if m.group(1) == "conv" else norms
            d = int(m.group(2))
            return f"net.features.{where[d]}.{m.group(3)}" if d < len(where) else None
        return _sub([(r"classifier\.(.+)", r"net.fc.\1")])(key)

    return rename


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if any(k.startswith("net.") for k in keys):
        return "infoutil"
    if any(k.startswith("layers.conv.") for k in keys):
        return "rded"
    if "conv_stem.weight" in keys:
        return "timm"
    if "conv1.weight" in keys or "features.0.0.weight" in keys:
        return "torchvision"
    return "infoutil"  # a bare inner network (our own nets' names without "net.")


def _rule(layout: str, arch: str, model: torch.nn.Module) -> Callable[[str], str | None]:
    if layout == "infoutil":
        return lambda k: k if k.startswith("net.") or k in ("mean", "std") else f"net.{k}"
    if arch.startswith("convnet"):
        if layout != "rded":
            raise UserError(
                f"--layout {layout}: {arch} weights come only in RDED's layout (or ours)"
            )
        return _rded_convnet_rule(model)
    if arch.startswith("resnet"):
        return _resnet_rule  # torchvision, timm and RDED all use torchvision's names
    if arch == "mobilenetv2":
        return _timm_mobilenet_rule if layout == "timm" else _torchvision_mobilenet_rule
    raise UserError(f"no published layout is known for arch {arch!r}")


def map_weights(
    state: dict[str, torch.Tensor],
    arch: str,
    model: torch.nn.Module,
    layout: str,
    label: str,
    classes: str = "the dataset",
) -> dict[str, torch.Tensor]:
    """The file's tensors under our names (``layout``: a named one, not ``auto``), each
    checked: a missing, extra or mis-shaped tensor is refused in one line that names it."""
    rename = _rule(layout, arch, model)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = rename(key)
        if target is None or target not in ours:
            if key.endswith("num_batches_tracked"):
                continue  # a counter, not a weight; some releases have it, some do not
            raise UserError(
                f"{label}: tensor {key!r} has no place in {arch} (layout {layout}); check "
                "--arch and --layout"
            )
        if target in mapped:
            raise UserError(f"{label}: tensor {key!r} maps onto {target!r} twice")
        want = tuple(ours[target].shape)
        if target.startswith("net.fc.") and value.shape[0] != want[0]:
            raise UserError(
                f"{label}: the weights have {value.shape[0]} classes, but {classes} has "
                f"{want[0]}; name the class list the weights were trained on"
            )
        if tuple(value.shape) != want:
            stem = ""
            if target.startswith("net.stem.") and len(want) == 4 and want[-1] != value.shape[-1]:
                stem = (
                    f"; for inputs of 64 px and below our {arch} uses the small-image stem (3x3, "
                    "stride 1, no max-pool) where ImageNet weights have a 7x7 stride-2 one: "
                    "import at --image-size 65 or more (224 as trained), or use weights "
                    "trained with the small stem"
                )
            raise UserError(
                f"{label}: tensor {key!r} has shape {tuple(value.shape)}, {arch} needs "
                f"{tuple(ours[target].shape)} for {target!r}{stem}"
            )
        mapped[target] = value.to(ours[target].dtype)
    for key, value in ours.items():
        if key in mapped:
            continue
        if key in ("mean", "std") or key.endswith("num_batches_tracked"):
            mapped[key] = value  # normalisation comes with the class source, not the file
            continue
        raise UserError(
            f"{label}: tensor {_file_name(key, state, rename)!r} is missing from the file "
            f"(layout {layout}, {arch})"
        )
    return mapped


def _file_name(ours: str, state: dict, rename) -> str:
    """The name a missing tensor would have in the file: its module's name there (read off a
    sibling tensor that is present) and its own leaf; ours where no sibling tells."""
    parent, _, leaf = ours.rpartition(".")
    for key in state:
        target = rename(key)
        if target is not None and target.rpartition(".")[0] == parent:
            return f"{key.rpartition('.')[0]}.{leaf}"
    return ours


# ---------------------------------------------------------------- classes and normalisation


def weights_classes(
    classes: str, image_size: int | None, dataset: DatasetInfo | None, layout: str
) -> DatasetInfo:
    """The DatasetInfo that comes with the weights: ``classes`` is ``imagenet-1k`` (1,000
    wnids, ImageNet statistics, 224 px unless ``image_size``) or the dataset the weights were
    trained on (``dataset``, already resolved), whose class order they keep. Published
    layouts normalise RGB with ImageNet's statistics (torchvision's and timm's recipes, and
    RDED's for every dataset); our own layout with the dataset's."""
    if classes == "imagenet-1k":
        wnids = tuple(w for w, _ in imagenet1k_classes())
        return DatasetInfo("imagenet-1k", wnids, image_size or 224, 3, IMAGENET_MEAN, IMAGENET_STD)
    if dataset is None:
        raise UserError(f"--classes {classes}: give imagenet-1k or a dataset name")
    imagenet_stats = layout != "infoutil" and dataset.channels == 3
    return DatasetInfo(
        dataset.name,
        dataset.class_names,
        image_size or dataset.image_size,
        dataset.channels,
        IMAGENET_MEAN if imagenet_stats else dataset.mean,
        IMAGENET_STD if imagenet_stats else dataset.std,
    )


def import_weights(
    path: Path, arch: str, classes: str, layout: str = "auto", image_size: int | None = None,
    dataset: DatasetInfo | None = None,
):  # fmt: skip
    """(a Classifier holding the file's weights, the DatasetInfo that came with them, the
    layout read). The class count of the file's last layer must match the class source."""
    from infoutil.models import create_model

    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    state = read_weights(path)
    if layout == "auto":
        layout = detect_layout(state)
    info = weights_classes(classes, image_size, dataset, layout)
    model = create_model(arch, info)
    mapped = map_weights(state, arch, model, layout, str(path), f"--classes {classes}")
    model.load_state_dict(mapped)
    return model.eval(), info, layout


def class_restriction(have: DatasetInfo, want: DatasetInfo, where: str) -> list[int] | None:
    """Indices of ``want``'s classes among ``have``'s, in ``want``'s order, where a teacher
    of many wnid classes (ImageNet-1K) serves a subset whose class folders are wnids
    (ImageWoof, ImageNette, ImageNet-100); None where no restriction applies."""
    if have.num_classes <= want.num_classes or not all(WNID.match(c) for c in have.class_names):
        return None
    not_wnids = [c for c in want.class_names if not WNID.match(c)]
    if not_wnids:
        raise UserError(
            f"{where}: a {have.num_classes}-class ImageNet teacher needs class folders named by "
            f"their wnids (like n02086240), but {want.name} has {not_wnids[0]!r}; rename its "
            "class folders to wnids (RDED's 00000... folders: see docs/design.md)"
        )
    index = {c: i for i, c in enumerate(have.class_names)}
    absent = [c for c in want.class_names if c not in index]
    if absent:
        raise UserError(
            f"{where}: class {absent[0]!r} of {want.name} is not one of the teacher's "
            f"{have.num_classes} classes; use a teacher trained on it"
        )
    return [index[c] for c in want.class_names]


def restrict_classes(model: torch.nn.Module, indices: list[int]) -> None:
    """Keep only ``indices`` of the final layer, in that order: the restricted model's logits
    are exactly the full model's logits at those classes."""
    fc = model.fc
    idx = torch.as_tensor(indices, dtype=torch.int64)
    new = torch.nn.Linear(fc.in_features, len(indices), bias=fc.bias is not None)
    with torch.no_grad():
        new.weight.copy_(fc.weight[idx])
        if fc.bias is not None:
            new.bias.copy_(fc.bias[idx])
    model.net.fc = new
