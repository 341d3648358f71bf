"""Typed configuration: every knob has a name, a type, a default and a documented reason.

Configs are pydantic models that refuse unknown keys. A YAML file (``--config FILE``) sets
values; command-line options override it. The resolved config is written beside every output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infoutil.data.base import ValidationSplit
from infoutil.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HoldsOutValidation(Strict):
    """A seeded validation split held out of the training set (``--val-per-class``).

    Set, it is all the run may not touch: candidate pools, coresets, ``full`` and teacher
    training see only the rest. Unset (the default), the whole training set is used.
    """

    val_per_class: int | None = Field(None, ge=1)
    val_seed: int = 0

    @property
    def validation(self) -> ValidationSplit | None:
        if self.val_per_class is None:
            return None
        return ValidationSplit(self.val_per_class, self.val_seed)


class TeacherConfig(HoldsOutValidation):
    """Teacher training: SGD with momentum and a per-step cosine schedule to zero.

    The paper does not give its teacher recipe (``infoutil-paper.md`` gap 8); this is the
    standard CIFAR recipe, shortened to the epochs asked for.
    """

    dataset: str
    image_size: int | None = Field(None, ge=8)  # imagefolder:PATH only (None: see data docs)
    arch: str = "convnet3"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    # None: by input size (training.teacher.default_lr: 0.05 up to 32 px, 0.01 above), resolved
    # before the run starts and written to its config.json
    lr: float | None = Field(None, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    seed: int = 0
    augment: bool = True  # pad-4 random crop + horizontal flip
    train_per_class: int | None = Field(None, ge=1)  # a seeded subset, for tests and demos
    test_per_class: int | None = Field(None, ge=1)  # measure on a subset (default: all)
    # ours: every epoch is measured on a class-balanced sample of this many images (of the
    # validation split where one is held out, else of the test set), and the whole test set
    # once, at the last epoch; None: the whole probe split every epoch. A full ImageWoof test
    # pass after every epoch was 75% of a small teacher run's time
    probe_images: int | None = Field(2000, ge=1)
    # ours: bf16 autocast for the training forwards (fp32 weights and optimizer); on CPUs
    # with bf16 units about 1.6x compiled fp32 for ConvNet-4 at 64 px (BENCHMARKS.md)
    precision: Literal["fp32", "bf16"] = "fp32"
    # ours: DataLoader processes that decode the next batches while one trains (a folder of
    # JPEGs: the decoding is the cost); 0 reads each batch in the training process. The same
    # batches either way, so the same weights
    loader_workers: int = Field(0, ge=0)
    # ours: the training and test forwards through torch.compile (inductor); 1.68x the images/s
    # of eager for ConvNet-5 at 128 px on this CPU (BENCHMARKS.md). Opt-in: it needs a C++
    # compiler, and its numbers differ from eager ones in the last bits
    compile: bool = False


class AmortizedConfig(Strict):
    """``attribution: fastshap``: the amortised explainer (``attribution.amortized``; sizes
    are ours, the paper has no such stage). Measured on CIFAR-10 in BENCHMARKS.md."""

    # candidates per class (a seeded sample of the pool) whose masked evaluations train it
    images_per_class: int = Field(50, ge=1)
    coalitions: int = Field(64, ge=2)  # per training image: kernel-sampled, paired (even)
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _paired(self):
        if self.coalitions % 2:
            raise UserError(
                f"fastshap.coalitions {self.coalitions} is odd; each coalition is paired "
                "with its complement, so use an even number"
            )
        return self


class InformativenessConfig(Strict):
    """Stage 1 (paper §2, App. B.1). Defaults are the paper's unless marked as ours."""

    grid: int = Field(4, ge=1)  # paper: 4x4 patches are the players
    # where the crop goes: the Shapley map (paper); Grad-CAM on the same cells (the paper's
    # Table 8 control); a random position of the same window size (is attribution worth it?);
    # RDED's crops (its rded.num_crops random squares of rded.min_scale to the whole image,
    # the same boxes as the rded method's, no map; a control) or an amortised explainer of
    # the same Shapley game (FastSHAP; ours, opt-in: one forward per candidate after training
    # on part of the pool)
    attribution: Literal["shapley", "gradcam", "random", "rded", "fastshap"] = "shapley"
    fastshap: AmortizedConfig = AmortizedConfig()
    # ours (the paper used Captum's KernelShap): Leverage SHAP's coalitions with a
    # Gaussian-process solve, 2.5-3.5x smaller error per evaluation on image games
    estimator: Literal["exact", "kernel", "leverage", "leverage-gp", "permutation"] = "leverage-gp"
    # value-function evaluations per image (ours; paper silent): at 512 the crop matches
    # exact Shapley's 97-98% of the time, at 256 95% (BENCHMARKS.md); 256 is the fast choice
    budget: int = Field(512, ge=1)
    baseline: Literal["zero", "black", "mean", "blur"] = "zero"  # paper: absent patches zeroed
    target: Literal["prob", "logit"] = "prob"  # ours: true-class softmax probability
    # the crop window, in grid cells per side (2: the paper's 2x2 pooling, quarter-area windows);
    # None (ours, the default since the study): the patch's own share of the image, grid /
    # factor, so no crop is ever upsampled: the whole image at factor 1, a native quarter at 2
    pool_kernel: int | None = Field(None, ge=1)
    num_crops: int = Field(5, ge=1)  # paper: 5 crops per candidate
    alpha: float = Field(2.0, ge=0)  # paper: sigma = alpha * std(pooled map), alpha = 2
    noise_std: Literal["per_image", "global"] = "per_image"  # ours: std of each image's map
    dedupe: bool = True  # ours: identical (image, box) crops are scored once
    precision: Literal["fp32", "bf16"] = "fp32"
    # ours: the masked forwards through torch.compile (inductor), about twice as fast on one
    # CPU thread for 10-20 s of compiling; opt-in: it needs a C++ compiler, and its numbers
    # differ from eager ones in the last bits, as bf16's do (BENCHMARKS.md)
    compile: bool = False
    # maps only for a shortlist: per class, the shortlist x (k x IPC) candidates the utility
    # rule prefers as whole images (one forward and one gradient each); None: every candidate
    # (ours; skipped where the window is the whole image). Opt-in: at factor 2 it changes which
    # candidates are chosen, and one of two measured sets fell outside the seed std
    shortlist: float | None = Field(None, gt=0)
    # ours: a candidate's map stops early once none of its crops can move within z standard
    # errors of the leverage-gp posterior (budgets early_stop_from, doubling, up to the
    # budget); leverage-gp with per-image noise only, other estimators spend the budget
    early_stop_z: float | None = Field(None, gt=0)
    early_stop_from: int = Field(128, ge=1)

    @property
    def stops_early(self) -> bool:
        """Whether maps stop early: only ``leverage-gp`` has the error bound, and only
        per-image noise lets each candidate decide alone."""
        return (
            self.early_stop_z is not None
            and self.attribution == "shapley"
            and self.estimator == "leverage-gp"
            and self.noise_std == "per_image"
            and self.early_stop_from < self.budget
        )

    @property
    def evaluations(self) -> int:
        """Teacher forwards per candidate: every coalition for ``exact``, else the budget."""
        return 2 ** (self.grid**2) if self.estimator == "exact" else self.budget

    @model_validator(mode="after")
    def _fits_before_any_stage_runs(self):
        # refused here, before any stage runs, each with its own reason
        from infoutil.attribution.shapley import check_budget

        if self.pool_kernel is not None and self.pool_kernel > self.grid:
            raise UserError(f"pool_kernel {self.pool_kernel} is larger than the grid {self.grid}")
        check_budget(self.grid**2, self.estimator, self.evaluations)
        if self.stops_early:
            check_budget(self.grid**2, self.estimator, self.early_stop_from)
        return self


class UtilityConfig(Strict):
    """Stage 2 (paper §3): the norm of the teacher's cross-entropy gradient per crop."""

    grad_norm: Literal["full", "last_layer"] = "full"  # paper: all parameters
    crop_input: Literal["resize", "pad"] = "resize"  # ours; RDED zero-pads ("pad")
    # the rule that keeps k x IPC crops per class (selection.utility.UTILITY_RULES):
    # highest norm (paper), lowest, highest among teacher-correct crops, nearest a quantile,
    # CCS strata, BADGE's k-means++ on last-layer gradient embeddings, or the easiest crop of
    # each k-means group of the teacher's features (coverage first; ours, the default since
    # the study, docs/method.md)
    select: Literal[
        "highest", "lowest", "highest_correct", "quantile", "strata", "badge", "cluster"
    ] = "cluster"
    quantile: float = Field(0.5, ge=0, le=1)  # select=quantile: where the band sits
    strata: int = Field(10, ge=1)  # select=strata: how many score strata
    hardest_cut: float = Field(0.1, ge=0, lt=1)  # select=strata: hardest share dropped first
    # select=cluster: each group's lowest-norm crop, or (a control) the one nearest its mean
    cluster_pick: Literal["lowest", "medoid"] = "lowest"
    # all: every crop competes (paper's App. B.1, ours so far); best: at most one crop per
    # source image, then the images ranked (RDED, and Algorithm 1's one crop per image; the
    # default since the study)
    per_source: Literal["all", "best"] = "best"
    # the gradient norm at an earlier checkpoint of the scoring teacher's own run
    # (Definition 3 is stated at theta(t)); None: the scoring checkpoint (Algorithm 1)
    teacher_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)  # crops per vmap call (small is faster on CPU)


class RandomConfig(Strict):
    """The ``random`` baseline: real images drawn with the seed."""

    # whole: IPC whole images per class at any factor (DD-Ranking's reference); windows
    # (ours, the crop-level control at factor >= 2): factor^2 x IPC images per class, each
    # cut to a native window of side size/factor at a random position, stitched
    patches: Literal["whole", "windows"] = "whole"


class RdedConfig(Strict):
    """RDED's selection (anchors.md §1.3): random resized crops scored by teacher CE."""

    num_crops: int = Field(5, ge=1)
    min_scale: float = Field(0.08, gt=0, le=1)


# Named presets of the method's free choices. A preset fills the keys it names before the
# file and the flags are applied; the built-in defaults fill the rest. "paper" is the paper's
# text read literally (docs/method.md), whatever the defaults become.
RECIPES: dict[str, dict] = {
    # whole images (factor 1) at every resolution: at 32 px (CIFAR-10) the easiest whole image
    # of each feature group beat map-placed windows and factor 2; at 128 px (ImageWoof,
    # ConvNet-5) it beat every factor-2 set of stitched quarters, whether placed by the Shapley
    # map, Grad-CAM, RDED's crops or at random (docs/method.md, BENCHMARKS.md). --factor 2
    # gives the paper's stitched regime
    "default": {"factor": 1},
    "paper": {
        "informativeness": {
            "attribution": "shapley",
            "grid": 4,
            "pool_kernel": 2,
            "num_crops": 5,
            "alpha": 2.0,
            "noise_std": "per_image",
            # the paper maps every candidate at the full budget
            "shortlist": None,
            "early_stop_z": None,
        },
        "utility": {"select": "highest", "per_source": "all", "teacher_epoch": None},
    },
}


class DistillConfig(HoldsOutValidation):
    # a preset of the method's free choices (RECIPES); explicit keys override it
    recipe: Literal["default", "paper"] = "default"
    method: Literal["infoutil", "rded", "random", "herding", "kcenter", "full"] = "infoutil"
    dataset: str
    image_size: int | None = Field(None, ge=8)  # imagefolder:PATH only (None: see data docs)
    ipc: int = Field(..., ge=1, description="images per class")
    seed: int = 0
    candidates_per_class: int = Field(300, ge=1)  # paper/RDED: 300
    # patches per side; None: RDED's rule, 1 up to 64 px and 2 above (rded, --recipe paper);
    # InfoUtil's default recipe sets 1
    factor: int | None = Field(None, ge=1)
    # how ranked patches fill images at factor >= 2 (methods.common.STITCH_RULES): None, the
    # method's own rule (rded: "blocks", as its code; infoutil: "consecutive", Algorithm 1)
    stitch: Literal["consecutive", "blocks"] | None = None
    informativeness: InformativenessConfig = InformativenessConfig()
    utility: UtilityConfig = UtilityConfig()
    rded: RdedConfig = RdedConfig()
    random: RandomConfig = RandomConfig()
    # images per teacher forward; None: 512 up to 32 px, fewer for larger images (as many
    # pixels as 512 images of 32 px, at least 16), so that a forward's activations stay near
    # half a GB: at 128 px, 512 images a forward took ConvNet-5's distil to a 9 GB peak
    forward_batch_size: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, values):
        if not isinstance(values, dict) or values.get("recipe", "default") not in RECIPES:
            return values  # pydantic names an unknown recipe
        if values.get("method", "infoutil") != "infoutil":
            return values  # a recipe is InfoUtil's; the baselines keep their own defaults
        plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in values.items()}
        return merge(RECIPES[plain.get("recipe", "default")], plain, keep_none=True)


class ProtocolConfig(Strict):
    """How a student is trained on a distilled set and measured (anchors.md §1.6).

    ``rded`` follows RDED's validation code; where we differ it is named here:
    the LR decays to ``lr_floor`` x lr (RDED: 0.5; ours: 0, a full cosine), the test images are
    used at native size (RDED: Resize(s/7*8) + CenterCrop, a no-op at 32 px), and the reported
    accuracy is the last epoch's (RDED: the best of its last evaluations).
    """

    name: str = "rded"
    epochs: int = Field(300, ge=1)
    lr: float | None = Field(None, gt=0)  # None: RDED's per-student table (1e-3 for most)
    weight_decay: float = Field(0.01, ge=0)  # AdamW, not on norms or biases
    lr_floor: float = Field(0.0, ge=0, le=1)
    temperature: float = Field(20.0, gt=0)
    # online: the teacher relabels every batch (RDED); static: the set's stored soft labels;
    # hard: the set's hard labels and cross-entropy, no teacher at training time
    labels: Literal["online", "static", "hard"] = "online"
    shuffle_patches: bool = True
    random_resized_crop: bool = True  # scale (1/factor, 1)
    flip: bool = True
    cutmix: bool = True
    autoaugment: bool = False
    batch_size: int | None = Field(None, ge=1)  # None: RDED's rule by IPC and class count
    # a budget of optimizer steps instead of epochs (budgets that compare across IPC); the
    # epochs are then as many as the steps take, rounded up, and both are recorded
    steps: int | None = Field(None, ge=1)
    # hard labels with no lr given: the grid the lr is chosen from on the validation split
    # (DD-Ranking tunes hard-label runs over {0.001, 0.005, 0.01, 0.05, 0.1} with its own
    # optimiser; these are the values AdamW trains at)
    lr_grid: tuple[float, ...] = (0.001, 0.005, 0.01)
    # ours: where the grid's best is its lowest or highest value, up to this many more values
    # past that edge, each one edge step further (0.0002 below 0.001, 0.005), while the
    # newest keeps winning; a best at the edge of the grid is not yet a choice (every CIFAR-10
    # set chose 0.001, the lowest, on the grid alone)
    lr_grid_extend: int = Field(2, ge=0)
    eval_points: int = Field(5, ge=1)  # points on the curve (the last, on the full test set,
    # is the one reported; the others use a class-balanced probe of ``probe_images``)
    probe_images: int = Field(2000, ge=1)
    test_per_class: int | None = Field(None, ge=1)  # None: the whole test set (quick checks)
    # images per test-pass forward; None: 500 at 32 px and as many pixels above, capped by
    # the memory available (models.inference_batch; 500 at 128 px took 4.2 GB an activation)
    eval_batch_size: int | None = Field(None, ge=1)
    # ours: bf16 autocast for the student's forward and the teacher's online labels (fp32
    # weights, optimizer and loss); opt-in until checked against fp32 on the sets it trains on
    precision: Literal["fp32", "bf16"] = "fp32"
    # ours: the student's training steps and the teacher's online labels through torch.compile
    # (inductor); opt-in, as for teachers: it needs a C++ compiler, and its numbers differ from
    # eager ones in the last bits
    compile: bool = False


PROTOCOLS = {
    "rded": ProtocolConfig(),
    "static": ProtocolConfig(
        name="static", labels="static", shuffle_patches=False, random_resized_crop=False
    ),
    # the same augmentations as rded, the set's hard labels, the lr chosen on validation
    "hard": ProtocolConfig(name="hard", labels="hard"),
}


def format_validation_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key {key!r}; check the spelling against --help"
    if first["type"] == "missing":
        flag = "--" + key.replace("_", "-")
        return f"{where}: {key} is required; pass {flag} or set it in --config"
    return f"{where}: {key}: {first['msg']} (got {first.get('input')!r})"


def build_config(cls: type[Strict], values: dict, where: str = "config"):
    try:
        return cls(**values)
    except ValidationError as err:
        raise UserError(format_validation_error(err, where)) from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def merge(base: dict, override: dict, keep_none: bool = False) -> dict:
    """Deep-merge ``override`` into ``base``. ``None`` in override means 'not given' (a flag
    left out), unless ``keep_none``: then it is a value, as in a config."""
    out = dict(base)
    for k, v in override.items():
        if v is None and not keep_none:
            continue
        if isinstance(v, dict):
            nested = merge(out[k] if isinstance(out.get(k), dict) else {}, v, keep_none)
            if nested:
                out[k] = nested
        else:
            out[k] = v
    return out
