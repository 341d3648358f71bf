"""Published weights as teachers: layouts, the ImageNet stem against a committed reference,
refusals that name the tensor, and an ImageNet teacher restricted to ImageWoof's wnids."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from infoutil.data.base import DatasetInfo
from infoutil.data.folders import scan_zip
from infoutil.data.sources import dataset_info
from infoutil.errors import UserError
from infoutil.io.checkpoint import load_teacher, save_teacher_epoch
from infoutil.models.pretrained import imagenet1k_classes, import_weights
from tests.fixtures.pretrained_reference import (
    REFERENCE,
    fill,
    rded_convnet_shapes,
    reference_images,
    timm_mobilenet_shapes,
    torchvision_mobilenet_shapes,
    torchvision_resnet_shapes,
)

# ImageWoof's classes among ImageNet-1K's indices (public knowledge, e.g. fastai/imagenette#46)
IMAGEWOOF_IN_IMAGENET = [155, 159, 162, 167, 182, 193, 207, 229, 258, 273]


def _save_pth(state: dict, path, wrap: str | None = None):
    torch.save({wrap: state} if wrap else state, path)
    return path


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_imagenet_resnet_computes_the_reference_logits(arch, tmp_path):
    """Our ResNet at > 64 px (the ImageNet stem) against logits committed from an independent
    functional forward of torchvision's definition (tests/fixtures/pretrained_reference.py)."""
    ref = json.loads(REFERENCE.read_text())[arch]
    state = fill(torchvision_resnet_shapes(arch), ref["seed"])
    path = _save_pth(state, tmp_path / f"{arch}.pth")
    model, info, layout = import_weights(path, arch, "imagenet-1k", image_size=ref["size"])
    assert layout == "torchvision" and info.num_classes == 1000 and info.mean[0] == 0.485
    with torch.no_grad():
        logits = model(reference_images(ref["images"], ref["size"]))
    expected = torch.tensor(ref["logits"])
    scale = float(expected.abs().max())
    assert float((logits - expected).abs().max()) < 1e-4 * scale
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_timm_safetensors_and_a_wrapped_pth_give_the_same_teacher(tmp_path):
    state = fill(torchvision_resnet_shapes("resnet18"), 0)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    wrapped = {f"module.{k}": v for k, v in state.items()}
    _save_pth(wrapped, tmp_path / "rded.pth", wrap="model")
    a, _, _ = import_weights(tmp_path / "model.safetensors", "resnet18", "imagenet-1k")
    b, _, _ = import_weights(tmp_path / "rded.pth", "resnet18", "imagenet-1k")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    "shapes,layout,suffix",
    [
        (torchvision_mobilenet_shapes, "torchvision", ".pth"),
        (timm_mobilenet_shapes, "timm", ".bin"),
    ],
)
def test_mobilenet_layouts_fill_every_tensor_once(shapes, layout, suffix, tmp_path):
    state = fill(shapes(), 3)
    path = _save_pth(state, tmp_path / f"mbv2{suffix}")
    model, _, read = import_weights(path, "mobilenetv2", "imagenet-1k", image_size=96)
    assert read == layout
    # every weight of the file is in the model (map_weights refuses leftovers and gaps)
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    assert len(ours) - 2 == len(theirs)  # ours also holds the normalisation's mean and std
    assert model(torch.rand(1, 3, 96, 96)).shape == (1, 1000)


def test_rded_convnet_matches_its_definition(tmp_path):
    """RDED's ConvNet-5 (BatchNorm) at 128 px for ImageWoof, from a {"model": ...} file, against
    a functional forward of its definition (conv, norm, ReLU, 2x2 average pool; a linear)."""
    state = fill(rded_convnet_shapes(5, 10, 128), 5)
    path = _save_pth(state, tmp_path / "imagenet-woof_conv5.pth", wrap="model")
    woof = dataset_info("imagewoof")
    model, info, layout = import_weights(path, "convnet5-bn", "imagewoof", dataset=woof)
    assert layout == "rded" and info.class_names == woof.class_names
    assert info.mean == (0.485, 0.456, 0.406)  # RDED normalises every dataset so
    x = torch.rand(2, 3, 128, 128)
    h = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    for d in range(5):
        h = F.conv2d(h, state[f"layers.conv.{d}.weight"], state[f"layers.conv.{d}.bias"], padding=1)
        n = f"layers.norm.{d}"
        h = F.batch_norm(h, state[f"{n}.running_mean"], state[f"{n}.running_var"],
                         state[f"{n}.weight"], state[f"{n}.bias"], training=False)  # fmt: skip
        h = F.avg_pool2d(F.relu(h), 2)
    expected = F.linear(h.flatten(1), state["classifier.weight"], state["classifier.bias"])
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)


def _resnet_file(tmp_path, edit=None, name="w.pth"):
    state = fill(torchvision_resnet_shapes("resnet18"), 0)
    if edit:
        edit(state)
    return _save_pth(state, tmp_path / name)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda s: s.pop("layer3.1.bn2.running_var"),
            "tensor 'layer3.1.bn2.running_var' is missing from the file",
        ),  # the file's name, not ours (net.layers.2.1.bn2.running_var)
        (
            lambda s: s.__setitem__("layer2.0.conv1.weight", torch.zeros(128, 64, 1, 1)),
            "tensor 'layer2.0.conv1.weight' has shape (128, 64, 1, 1)",
        ),  # fmt: skip
        (
            lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)),
            "tensor 'layer5.0.conv1.weight' has no place",
        ),  # fmt: skip
        (lambda s: s.__setitem__("fc.weight", torch.zeros(10, 512)), "have 10 classes"),
    ],
)
def test_a_weights_file_that_does_not_fit_is_refused_naming_the_tensor(edit, message, tmp_path):
    with pytest.raises(UserError) as err:
        import_weights(_resnet_file(tmp_path, edit), "resnet18", "imagenet-1k")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_file_is_not_called_pickled_code(content, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        import_weights(path, "resnet18", "imagenet-1k")
    said = str(err.value)
    assert ("is empty" in said or "may be truncated" in said) and "pickled" not in said
    assert "\n" not in said


def test_imagenet_weights_at_64_px_name_the_small_image_stem(tmp_path):
    with pytest.raises(UserError) as err:
        import_weights(_resnet_file(tmp_path), "resnet18", "imagenet-1k", image_size=64)
    assert "tensor 'conv1.weight' has shape (64, 3, 7, 7)" in str(err.value)
    assert "small-image stem" in str(err.value) and "--image-size 65 or more" in str(err.value)


def test_wrong_class_count_names_both_counts(tmp_path):
    with pytest.raises(UserError, match="have 1000 classes, but --classes imagewoof has 10"):
        import_weights(
            _resnet_file(tmp_path), "resnet18", "imagewoof", dataset=dataset_info("imagewoof")
        )


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_a_pickle_that_runs_code_is_refused(suffix, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"fc.weight": Evil()}}, f)
    with pytest.raises(UserError, match="refused to load"):
        import_weights(path, "resnet18", "imagenet-1k")
    assert not marker.exists()


def test_the_imagenet_class_list_is_torchvisions_order():
    rows = imagenet1k_classes()
    assert len(rows) == 1000 and [w for w, _ in rows] == sorted(w for w, _ in rows)
    assert rows[0] == ("n01440764", "tench")
    assert [rows[i][1] for i in (155, 273)] == ["Shih-Tzu", "dingo"]


@pytest.fixture
def imagenet_teacher(tmp_path):
    """An imported 1000-class ResNet-18 teacher at 224 px."""
    model, info, layout = import_weights(_resnet_file(tmp_path), "resnet18", "imagenet-1k")
    out = tmp_path / "teacher"
    save_teacher_epoch(out, model, {"arch": "resnet18", "dataset": info.to_dict(), "epoch": 1,
                                    "imported_from": {"layout": layout}})  # fmt: skip
    return out, model


def test_an_imagenet_teacher_serves_imagewoof_through_its_wnids(imagenet_teacher, data_root):
    out, full = imagenet_teacher
    # ImageWoof's real class folders, read from the shared archive
    with zipfile.ZipFile(data_root / "imagewoof" / "val.zip") as zf:
        wnids = list(scan_zip(zf, "val", "val.zip"))
    woof = dataset_info("imagewoof", image_size=224)
    assert list(woof.class_names) == wnids
    t = load_teacher(out, expect=woof)
    x = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        # the same numbers, up to the summation order of a 10-row against a 1000-row matmul
        assert torch.allclose(t.model(x), full(x)[:, IMAGEWOOF_IN_IMAGENET], rtol=1e-5, atol=1e-4)
    record = t.describe()["class_restriction"]
    assert record["indices"] == IMAGEWOOF_IN_IMAGENET and record["from_classes"] == 1000
    assert record["class_names"] == wnids and t.info.class_names == tuple(wnids)


# ImageNette's classes among ImageNet-1K's indices; parachute is 701 (n03888257), not 702
IMAGENETTE_IN_IMAGENET = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


def test_an_imagenet_teacher_on_imagenette_keeps_parachutes_logit(imagenet_teacher):
    out, full = imagenet_teacher
    nette = dataset_info("imagenette", image_size=224)
    assert nette.class_names[-1] == "n03888257"
    t = load_teacher(out, expect=nette)
    assert t.describe()["class_restriction"]["indices"] == IMAGENETTE_IN_IMAGENET
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(t.model(x)[:, -1], full(x)[:, 701], rtol=1e-5, atol=1e-4)


def test_a_subset_without_wnid_folders_is_refused_with_the_fix(imagenet_teacher):
    out, _ = imagenet_teacher
    rded_style = DatasetInfo(
        "imagefolder:woof", tuple(f"{i:05d}" for i in range(10)), 224, 3, (0.5,) * 3, (0.2,) * 3
    )
    with pytest.raises(UserError, match="named by their wnids.*rename its class folders"):
        load_teacher(out, expect=rded_style)
    # the wrong size is still refused, restricted or not
    with pytest.raises(UserError, match="expects 3x224x224"):
        load_teacher(out, expect=dataset_info("imagewoof"))


def test_a_class_order_mismatch_is_refused_and_class_order_fixes_it(
    fmnist_teacher, data_root, tmp_path
):
    """Weights whose last layer lists the classes in another order score near chance: refused
    in one line that names the fix; --class-order with the weights' order imports them."""
    from safetensors.torch import save_file

    from infoutil.training.importer import import_teacher
    from tests.helpers import quiet

    teacher = load_teacher(fmnist_teacher)
    state = {k: v.contiguous() for k, v in teacher.model.state_dict().items()}
    order = list(range(10))[::-1]  # the file lists the classes backwards
    state["net.fc.weight"], state["net.fc.bias"] = (
        state["net.fc.weight"][order],
        state["net.fc.bias"][order],
    )
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    run = quiet(data_root)
    args = dict(classes="fashion-mnist", dataset="fashion-mnist", layout="infoutil", run=run)
    with pytest.raises(UserError, match="near chance.*--class-order FILE") as err:
        import_teacher(weights, "convnet3", tmp_path / "a", **args)
    assert "\n" not in str(err.value) and not (tmp_path / "a").exists()
    listed = tmp_path / "order.txt"
    names = teacher.info.class_names
    listed.write_text("".join(f"{names[i]}\n" for i in order))
    meta = import_teacher(weights, "convnet3", tmp_path / "b", class_order=listed, **args)
    assert meta["test_accuracy"] > 0.5 and meta["imported_from"]["class_order"] == str(listed)
