"""Utility (paper §3): the norm of the teacher's loss gradient for each sample, and top-k.

``full``: the L2 norm of d CE(teacher(x), y) / d theta over every teacher parameter, per sample,
computed with ``torch.func`` (``vmap`` of ``grad`` over a functional call), in chunks.
``last_layer``: the same norm restricted to the final linear layer, in closed form:
||(p - onehot(y)) h^T||^2 + ||p - onehot(y)||^2 = ||p - onehot(y)||^2 (||h||^2 + 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from infoutil.models import Classifier
from infoutil.selection.scored import true_class_prob


def grad_norms(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str = "full",
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-sample gradient norms ``[B]`` (float64) of the hard-label cross-entropy."""
    return grad_norms_and_logits(model, images, labels, mode=mode, batch_size=batch_size)[0]


def grad_norms_and_logits(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str = "full",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient norms ``[B]`` (float64) and the logits ``[B, C]`` of the same forward: what
    the teacher thought of each sample when it scored it, for the selection diagnostics."""
    model.eval()  # running statistics for batch norm: each sample's gradient is its own
    if mode == "last_layer":
        return last_layer_grad_norms(model, images, labels, batch_size)
    if mode != "full":
        raise ValueError(f"unknown grad_norm {mode!r}; choose 'full' or 'last_layer'")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0)), out[0].detach()

    per_sample = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0))
    norms, logits = [], []
    with _one_cpu_thread(images.device):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            y = labels[start : start + batch_size]
            grads, out = per_sample(params, x, y)
            sq = sum(g.reshape(len(x), -1).double().pow(2).sum(1) for g in grads.values())
            norms.append(sq.sqrt().cpu())
            logits.append(out.float().cpu())
    if not norms:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, 0)
    return torch.cat(norms), torch.cat(logits)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Per-sample gradients on one intra-op thread. On a CPU their weight-gradient reductions
    split by thread, so their last bits depend on the thread count, and the scores would differ
    between a single process and torchrun ranks (which run one thread each). Measured, one
    thread is no slower here: vmapped per-sample gradients are memory-bound (BENCHMARKS.md)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def last_layer_grad_norms(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    norms, logits = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        h = model.features(x).to(torch.float64)
        z = model.fc(h.float())
        p = torch.softmax(z.to(torch.float64), 1)
        err = p - F.one_hot(y.to(p.device), p.shape[1]).to(torch.float64)
        norms.append((err.pow(2).sum(1) * (h.pow(2).sum(1) + 1.0)).sqrt().cpu())
        logits.append(z.float().cpu())
    if not norms:
        return torch.empty(0, dtype=torch.float64), torch.empty(0, 0)
    return torch.cat(norms), torch.cat(logits)


def grad_norms_loop(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    params: list[torch.nn.Parameter] | None = None,
) -> torch.Tensor:
    """The plain reference: one backward pass per sample (slow; for tests)."""
    model.eval()
    params = list(model.parameters()) if params is None else params
    norms = []
    for x, y in zip(images, labels, strict=True):
        loss = F.cross_entropy(model(x[None]), y[None])
        gs = torch.autograd.grad(loss, params)
        norms.append(torch.sqrt(sum(g.to(torch.float64).pow(2).sum() for g in gs)))
    return torch.stack(norms)


def top_k_per_class(
    scores: torch.Tensor, classes: torch.Tensor, k: int, num_classes: int, descending: bool = True
) -> list[torch.Tensor]:
    """For each class, the indices of its ``k`` best scores, best first.

    Ties go to the lower index (a stable sort), so the selection is deterministic.
    """
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(classes == c).flatten()
        order = torch.sort(scores[idx], descending=descending, stable=True).indices
        picked.append(idx[order[:k]])
    return picked


# ---------------------------------------------------------------- utility rules
#
# A rule picks ``need`` of one class's crops, in rank order. Ranking rules sort the crops by a
# key; set rules (``strata``, ``badge``) pick them one after another. With ``one_per_source``
# a crop whose source image already gave a crop is passed over, so each source image gives at
# most one patch (RDED's and Algorithm 1's reading: a crop per image, then the images ranked).


@dataclass
class ClassCrops:
    """One class's scored crops (every tensor ``[P]``) and what a rule may need."""

    score: torch.Tensor  # the utility score: the gradient norm (higher: harder)
    correct: torch.Tensor  # bool: the teacher predicts the true class
    source: torch.Tensor  # the source image of each crop
    generator: torch.Generator
    # the crops' last layer, computed only by the rules that need it: (p - e_y) [P, C] and the
    # penultimate features h [P, D]; the last-layer gradient embedding is their outer product
    embed: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None

    def gram(self) -> torch.Tensor:
        """<g_i, g_j> of the last-layer gradient embeddings g = (p - e_y) x [h, 1], without
        forming them: <e_i, e_j> (<h_i, h_j> + 1)."""
        err, h = self.embed()
        return (err @ err.T) * (h @ h.T + 1.0)


def _greedy(order: torch.Tensor, crops: ClassCrops, need: int, one_per_source: bool):
    if not one_per_source:
        return order[:need]
    seen, out = set(), []
    for i in order.tolist():
        s = int(crops.source[i])
        if s not in seen:
            seen.add(s)
            out.append(i)
            if len(out) == need:
                break
    return torch.tensor(out, dtype=torch.int64)


def _stable_order(key: torch.Tensor, descending: bool) -> torch.Tensor:
    return torch.sort(key, descending=descending, stable=True).indices


def rule_highest(crops: ClassCrops, need: int, one_per_source: bool, **_) -> torch.Tensor:
    """The paper's rule: the highest gradient norms (its utility bound)."""
    return _greedy(_stable_order(crops.score, True), crops, need, one_per_source)


def rule_lowest(crops: ClassCrops, need: int, one_per_source: bool, **_) -> torch.Tensor:
    """The lowest gradient norms: the crops the teacher finds easiest (RDED's direction)."""
    return _greedy(_stable_order(crops.score, False), crops, need, one_per_source)


def rule_highest_correct(crops: ClassCrops, need: int, one_per_source: bool, **_):
    """The highest norms among the crops the teacher classifies correctly; if too few are
    correct, the wrong ones follow, easiest first."""
    correct = torch.nonzero(crops.correct).flatten()
    wrong = torch.nonzero(~crops.correct).flatten()
    order = torch.cat(
        [
            correct[_stable_order(crops.score[correct], True)],
            wrong[_stable_order(crops.score[wrong], False)],
        ]
    )
    return _greedy(order, crops, need, one_per_source)


def rule_quantile(crops: ClassCrops, need: int, one_per_source: bool, *, quantile: float, **_):
    """The crops nearest a quantile of the class's scores: a band of medium difficulty whose
    width is what ``need`` takes (0.5: the median, as DELT and CV-DD initialise)."""
    n = len(crops.score)
    rank = torch.empty(n, dtype=torch.float64)
    rank[_stable_order(crops.score, False)] = torch.arange(n, dtype=torch.float64)
    position = rank / max(n - 1, 1)
    return _greedy(_stable_order((position - quantile).abs(), False), crops, need, one_per_source)


def rule_strata(
    crops: ClassCrops, need: int, one_per_source: bool, *, strata: int, hardest_cut: float, **_
):
    """Coverage-centric selection (CCS, Zheng et al. 2023): drop the hardest share, split the
    rest into equal-width score strata and give each stratum an equal share of the budget,
    drawn at random within it; what a small stratum cannot use goes to the others. Here the
    strata take turns, one crop each, easiest stratum first, which gives CCS's split."""
    n = len(crops.score)
    keep = _stable_order(crops.score, False)[: max(need, n - int(hardest_cut * n))]
    score = crops.score[keep]
    lo, hi = float(score.min()), float(score.max())
    width = (hi - lo) / strata or 1.0
    bins = ((score - lo) / width).floor().clamp(max=strata - 1).long()
    queues = [keep[bins == b] for b in range(strata)]
    queues = [q[torch.randperm(len(q), generator=crops.generator)].tolist() for q in queues]
    used: set[int] = set()
    picked: list[int] = []
    while len(picked) < need and any(queues):
        for q in queues:
            while q:
                i = q.pop(0)
                s = int(crops.source[i])
                if one_per_source and s in used:
                    continue
                used.add(s)
                picked.append(i)
                break
            if len(picked) == need:
                break
    return torch.tensor(picked, dtype=torch.int64)


def rule_badge(crops: ClassCrops, need: int, one_per_source: bool, **_) -> torch.Tensor:
    """BADGE (Ash et al. 2020): k-means++ seeding on last-layer gradient embeddings. The first
    pick has the largest embedding norm; each next one is drawn with probability proportional
    to its squared distance from the nearest pick, so picks are large and mutually different."""
    gram = crops.gram()
    sq = gram.diagonal().clone()
    n = len(sq)
    alive = torch.ones(n, dtype=torch.bool)
    first = int(torch.argmax(sq))
    picked = [first]
    nearest = (sq + sq[first] - 2 * gram[first]).clamp(min=0)

    def retire(i: int):
        alive[i] = False
        if one_per_source:
            alive[crops.source == crops.source[i]] = False

    retire(first)
    while len(picked) < min(need, n) and alive.any():
        w = torch.where(alive, nearest, torch.zeros_like(nearest))
        if float(w.sum()) <= 0:  # every live crop coincides with a pick: take the next in order
            i = int(torch.nonzero(alive).flatten()[0])
        else:
            i = int(torch.multinomial(w, 1, generator=crops.generator))
        picked.append(i)
        retire(i)
        nearest = torch.minimum(nearest, (sq + sq[i] - 2 * gram[i]).clamp(min=0))
    return torch.tensor(picked, dtype=torch.int64)


def kmeans(x: torch.Tensor, k: int, g: torch.Generator, iterations: int = 25) -> torch.Tensor:
    """Lloyd's k-means from a k-means++ start; returns each row's cluster ``[P]``."""
    centers = x[int(torch.randint(len(x), (), generator=g))][None]
    for _ in range(1, k):
        d = torch.cdist(x, centers).min(1).values ** 2
        i = int(torch.multinomial(d, 1, generator=g)) if float(d.sum()) > 0 else 0
        centers = torch.cat([centers, x[i][None]])
    assign = torch.zeros(len(x), dtype=torch.int64)
    for _ in range(iterations):
        assign = torch.cdist(x, centers).argmin(1)
        moved = torch.stack(
            [x[assign == j].mean(0) if (assign == j).any() else centers[j] for j in range(k)]
        )
        if torch.equal(moved, centers):
            break
        centers = moved
    return assign


def rule_cluster(
    crops: ClassCrops, need: int, one_per_source: bool, *, cluster_pick: str = "lowest", **_
) -> torch.Tensor:
    """Coverage first, then utility: k-means on the teacher's penultimate features splits the
    class into ``need`` groups, and each group gives its lowest-norm (easiest) crop, largest
    group first; groups that run out leave their turn to the easiest crops left.
    ``cluster_pick="medoid"`` (a control) takes the crop nearest its group's mean instead."""
    _, h = crops.embed()
    k = min(need, len(h))
    assign = kmeans(h.double(), k, crops.generator)
    if cluster_pick == "medoid":
        centres = torch.stack([h.double()[assign == j].mean(0) for j in range(k)])
        key = (h.double() - centres[assign]).norm(dim=1)
    else:
        key = crops.score
    assign = assign.tolist()
    by_score = _stable_order(key, False).tolist()
    sizes = torch.bincount(torch.tensor(assign), minlength=k).tolist()
    picked: list[int] = []
    used: set[int] = set()

    def free(i: int) -> bool:
        return i not in picked and not (one_per_source and int(crops.source[i]) in used)

    def take(i: int) -> None:
        picked.append(i)
        used.add(int(crops.source[i]))

    for group in sorted(range(k), key=lambda j: (-sizes[j], j)):
        best = next((i for i in by_score if assign[i] == group and free(i)), None)
        if best is not None:
            take(best)
    for i in by_score:
        if len(picked) >= need:
            break
        if free(i):
            take(i)
    return torch.tensor(picked[:need], dtype=torch.int64)


UTILITY_RULES: dict[str, Callable[..., torch.Tensor]] = {
    "highest": rule_highest,
    "lowest": rule_lowest,
    "highest_correct": rule_highest_correct,
    "quantile": rule_quantile,
    "strata": rule_strata,
    "badge": rule_badge,
    "cluster": rule_cluster,
}


def keep_by_rule(util, crops: ClassCrops, need: int) -> torch.Tensor:
    """Positions in ``crops`` that the rule ``util.select`` keeps, in rank order (``util``: a
    ``config.UtilityConfig``; at most one per source where ``util.per_source`` is ``best``)."""
    return UTILITY_RULES[util.select](
        crops,
        need,
        util.per_source == "best",
        quantile=util.quantile,
        strata=util.strata,
        hardest_cut=util.hardest_cut,
        cluster_pick=util.cluster_pick,
    )


def crop_scores(
    model: Classifier,
    crops: torch.Tensor,
    labels: torch.Tensor,
    *,
    judge: Classifier | None = None,
    mode: str = "full",
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Per crop: the gradient norm under ``model``, and the class probability and prediction of
    ``judge`` (default ``model``; another judge only informs the diagnostics)."""
    norm, logits = grad_norms_and_logits(
        model, crops, labels.to(crops.device), mode=mode, batch_size=batch_size
    )
    if judge is not None and judge is not model:
        with torch.inference_mode():
            logits = judge(crops).float().cpu()
    return {"grad_norm": norm, "prob": true_class_prob(logits, labels), "pred": logits.argmax(1)}


@torch.inference_mode()
def last_layer_pieces(model, crops_of, pool, rows: torch.Tensor, batch: int = 256):
    """(p - e_y, h) of the crops ``rows``: the pieces of their last-layer gradients, ``batch``
    crops a forward."""
    errs, feats = [], []
    for part in torch.split(rows, batch):
        x = crops_of(pool.source[part], pool.box[part][:, None])
        h = model.features(x).double()
        p = torch.softmax(model.fc(h.float()).double(), 1)
        errs.append(p - torch.nn.functional.one_hot(pool.label[part].to(p.device), p.shape[1]))
        feats.append(h)
    return torch.cat(errs).cpu(), torch.cat(feats).cpu()
