"""How the DDA's trainable parts are optimised: one place for stage 2 and its bench.

Only the LoRA, RDM's alpha and FGMM's region weights train; the base model stays frozen (in fp16 on
CUDA with `model.mixed_precision=fp16`, while the trained weights stay fp32 as in diffusers' LoRA
examples). One step: autocast forward, GradScaler backward, gradient clipping, then alpha and the
region weights are clamped back into their meaningful ranges (`DDA.clamp_scalars`).
"""

from __future__ import annotations

import torch

from data.paired import MAKEUP_LABELS
from models.dda import DDA


def prepare_training(dda: DDA, gradient_checkpointing: bool = False) -> DDA:
    """Mark the trainable parts, keep them fp32, and turn on gradient checkpointing when asked."""
    dda.set_trainable()
    for group in dda.trainable_parameters().values():
        for p in group:
            p.data = p.data.float()
    if gradient_checkpointing:
        dda.unet.enable_gradient_checkpointing()
        dda.vae.enable_gradient_checkpointing()
    return dda


def build_optimizer(dda: DDA, lr: float, scalar_lr: float) -> torch.optim.Adam:
    """Adam with two groups: the LoRA (and region conditioning) at `lr`, RDM's alpha and FGMM's weights at `scalar_lr`."""
    groups = dda.trainable_parameters()
    return torch.optim.Adam(
        [
            {"params": groups["lora"] + groups.get("region_conditioning", []), "lr": lr, "name": "lora"},
            {"params": groups["rdm_alpha"] + groups["fgmm"], "lr": scalar_lr, "name": "rdm_fgmm"},
        ]
    )


def train_step(dda: DDA, batch: dict, loss_fn, optimizer, scaler, grad_clip: float, use_fp16: bool) -> dict:
    """One optimizer step on a batch (source, target, mask, has_mask); returns the loss terms as floats."""
    device = dda.device
    source, target = batch["source"].to(device), batch["target"].to(device)
    has_mask = batch["has_mask"].to(device)
    # A pair with no mask is all skin for FGMM (its eyeliner loss then covers the whole image).
    skin = torch.full_like(batch["mask"], MAKEUP_LABELS["skin"])
    mask = torch.where(batch["has_mask"].view(-1, 1, 1), batch["mask"], skin).to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
        out = dda.training_forward(source, target, mask)
        terms = loss_fn(out, target, mask, has_mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.unscale_(optimizer)
    if grad_clip > 0:  # 0 turns clipping off, as in stage 4
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    dda.clamp_scalars()  # alpha in [0, 1], region weights in [0, 2] (models/dda.py)
    return {k: float(v.detach()) for k, v in terms.items()}
