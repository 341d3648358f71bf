"""Grad-CAM (Selvaraju et al., ICCV 2017) pooled onto the same ``grid x grid`` cells as the
Shapley game, so either map drives the same crop rule (the paper's Table 8 comparison).

The class-activation map is taken at the network's last spatial feature map (the last module
output with height and width above 1, found by hooks, so any registered model works):
``relu(sum_k mean(d y_c / d A_k) A_k)``, with ``y_c`` the true-class logit. It is upsampled to
the image and averaged over each cell. One forward and one backward per image, against the
Shapley map's hundreds of forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infoutil.attribution.patch import patch_index_map


def _last_spatial_activation(model: torch.nn.Module, x: torch.Tensor):
    """Forward ``x``; returns (logits, the last 4-D activation with H, W > 1)."""
    seen: list[torch.Tensor] = []

    def hook(_module, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 1:
            seen.append(out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("Grad-CAM needs a model with a spatial feature map")
    return logits, seen[-1]


def gradcam_maps(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, grid: int = 4
) -> torch.Tensor:
    """Grad-CAM of the true class averaged over each ``grid x grid`` cell: ``[B, grid, grid]``."""
    model.eval()
    with torch.enable_grad():
        x = images.detach().clone()
        logits, act = _last_spatial_activation(model, x)
        score = logits.gather(1, labels.to(logits.device)[:, None]).sum()
        (grads,) = torch.autograd.grad(score, act)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach()
    h, w = images.shape[-2:]
    cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    owner = patch_index_map(h, w, grid).to(cam.device).flatten()
    sums = torch.zeros((len(cam), grid * grid), dtype=torch.float64, device=cam.device)
    sums.index_add_(1, owner, cam.flatten(1).to(torch.float64))
    counts = torch.bincount(owner, minlength=grid * grid).to(sums)
    return (sums / counts).to(torch.float32).cpu().view(-1, grid, grid)
