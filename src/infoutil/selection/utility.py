"""Utility (paper §3): the norm of the teacher's loss gradient for each sample, and top-k.

``full``: the L2 norm of d CE(teacher(x), y) / d theta over every teacher parameter, per sample,
computed with ``torch.func`` (``vmap`` of ``grad`` over a functional call), in chunks.
``last_layer``: the same norm restricted to the final linear layer, in closed form:
||(p - onehot(y)) h^T||^2 + ||p - onehot(y)||^2 = ||p - onehot(y)||^2 (||h||^2 + 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from infoutil.models import Classifier


def grad_norms(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mode: str = "full",
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-sample gradient norms ``[B]`` (float64) of the hard-label cross-entropy."""
    model.eval()  # running statistics for batch norm: each sample's gradient is its own
    if mode == "last_layer":
        return last_layer_grad_norms(model, images, labels, batch_size)
    if mode != "full":
        raise ValueError(f"unknown grad_norm {mode!r}; choose 'full' or 'last_layer'")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    norms = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        grads = per_sample(params, x, y)
        sq = sum(g.reshape(len(x), -1).to(torch.float64).pow(2).sum(1) for g in grads.values())
        norms.append(sq.sqrt().cpu())
    return torch.cat(norms) if norms else torch.empty(0, dtype=torch.float64)


@torch.inference_mode()
def last_layer_grad_norms(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        h = model.features(x).to(torch.float64)
        p = torch.softmax(model.fc(h.float()).to(torch.float64), 1)
        err = p - F.one_hot(y.to(p.device), p.shape[1]).to(torch.float64)
        out.append((err.pow(2).sum(1) * (h.pow(2).sum(1) + 1.0)).sqrt().cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


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
