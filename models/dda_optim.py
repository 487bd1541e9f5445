"""How the DDA's trainable parts are optimised: one place for stage 2 and its bench.

Only the LoRA, RDM's alpha and FGMM's region weights train; the base model stays frozen (in fp16 on
CUDA with `model.mixed_precision=fp16`, while the trained weights stay fp32 as in diffusers' LoRA
examples). One step: the model's forward under autocast, the loss outside it (fp32: the Sobel conv and
the means), GradScaler backward, gradient clipping, then alpha and the region weights are clamped back
into their meaningful ranges (`DDA.clamp_scalars`). A step whose loss or gradient is not finite is
skipped and reported (`StepResult.finite`); `NonFiniteSteps` stops a run after 10 in a row.

The seed pairs' latents are encoded once per run (`LatentCache`): the VAE encoder is deterministic (the
posterior mean), so reusing them gives bit for bit the step that encoding again would.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from data.paired import MAKEUP_LABELS
from errors import ModelError
from models.dda import DDA

MAX_NONFINITE_IN_A_ROW = 10  # steps with a non-finite loss or gradient in a row that stop a run


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


class LatentCache:
    """Each training image's latent, encoded once per run and reused (a flipped pair is another image).

    The key is the image's content (a digest of the CPU tensor the data loader gives), so a cached latent
    can only ever stand for the very pixels it was encoded from. Use it when the images repeat (seed pairs,
    flips); with `data.affine` every image is new and a cache would only grow. `encoded` and `reused`
    count the images. Batch 1 (the default) is bit for bit the uncached step; in a larger batch the
    images not yet cached are encoded together, which batched kernels may round differently.
    """

    def __init__(self):
        self._latents: dict[str, torch.Tensor] = {}
        self.encoded = 0
        self.reused = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        return hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()

    @torch.no_grad()
    def latents(self, dda: DDA, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CPU images in [-1, 1] -> (B, 4, h, w) latents, as `dda.encode` gives them."""
        keys = [self.key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._latents]
        if missing:
            fresh = dda.encode(images[missing].to(dda.device))
            for i, latent in zip(missing, fresh):
                self._latents[keys[i]] = latent
        self.encoded += len(missing)
        self.reused += len(keys) - len(missing)
        return torch.stack([self._latents[key] for key in keys])


@dataclass
class StepResult:
    terms: dict[str, float]  # the loss terms (total, diffusion, l1, eyeliner)
    grad_norm: float  # of the trainable parameters, before clipping
    finite: bool  # False: the loss or the gradient was inf/NaN and the optimizer step was skipped
    loss_scale: float  # GradScaler's scale after the step (1.0 when it is off: fp32)


def train_step(
    dda: DDA,
    batch: dict,
    loss_fn,
    optimizer,
    scaler,
    grad_clip: float,
    use_fp16: bool,
    latent_cache: LatentCache | None = None,
) -> StepResult:
    """One optimizer step on a batch (source, target, mask, has_mask). A non-finite loss or gradient skips
    the optimizer step (GradScaler lowers its scale on inf gradients; in fp32 nothing else would stop it)."""
    device = dda.device
    source, target = batch["source"].to(device), batch["target"].to(device)
    has_mask = batch["has_mask"].to(device)
    # A pair with no mask is all skin for FGMM (its eyeliner loss then covers the whole image).
    skin = torch.full_like(batch["mask"], MAKEUP_LABELS["skin"])
    mask = torch.where(batch["has_mask"].view(-1, 1, 1), batch["mask"], skin).to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
        latents = None
        if latent_cache is not None:
            latents = latent_cache.latents(dda, batch["source"]), latent_cache.latents(dda, batch["target"])
        out = dda.training_forward(source, target, mask, latents=latents)
    terms = loss_fn(out, target, mask, has_mask)  # outside autocast: fp32 (training_forward returns fp32)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_clip > 0:  # 0 turns clipping off, as in stage 4
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    finite = bool(torch.isfinite(terms["total"].detach()) & torch.isfinite(grad_norm))
    if finite:
        scaler.step(optimizer)
    scaler.update()  # lowers the scale after inf gradients (fp16)
    dda.clamp_scalars()  # alpha in [0, 1], region weights in [0, 2] (models/dda.py)
    return StepResult(
        terms={k: float(v.detach()) for k, v in terms.items()},
        grad_norm=float(grad_norm),
        finite=finite,
        loss_scale=float(scaler.get_scale()) if scaler.is_enabled() else 1.0,
    )


class NonFiniteSteps:
    """Counts steps with a non-finite loss or gradient; `MAX_NONFINITE_IN_A_ROW` in a row stop the run
    with a ModelError naming the likely cause and the config key to change."""

    def __init__(self, dda: DDA, use_fp16: bool, lr: float, limit: int = MAX_NONFINITE_IN_A_ROW):
        self.use_fp16, self.upcast_vae, self.lr, self.limit = use_fp16, dda.upcast_vae, lr, limit
        self.total = 0
        self.in_a_row = 0

    def update(self, result: StepResult, step: int, log=None) -> None:
        if result.finite:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        bad = [k for k, v in result.terms.items() if k != "total" and not math.isfinite(v)] or ["gradient"]
        if log is not None:
            log.warning(
                "step %d: non-finite %s (loss %s, gradient norm %s): optimizer step skipped; GradScaler scale %g "
                "(%d in a row, %d in this run)",
                step,
                ", ".join(bad),
                result.terms.get("total"),
                result.grad_norm,
                result.loss_scale,
                self.in_a_row,
                self.total,
            )
        if self.in_a_row >= self.limit:
            raise ModelError(
                f"{self.in_a_row} training steps in a row gave a non-finite {', '.join(bad)} (GradScaler scale now "
                f"{result.loss_scale:g}, step {step}): {self.likely_cause(bad)}"
            )

    def likely_cause(self, bad: list[str]) -> str:
        if self.use_fp16 and not self.upcast_vae and any(k in bad for k in ("l1", "eyeliner")):
            return "the fp16 VAE decode overflowing, most likely: set model.vae_upcast=true (decode in fp32)"
        if self.use_fp16:
            return (
                "an fp16 overflow in the frozen model, most likely: train in fp32 with model.mixed_precision=no "
                f"(or lower train.lr, now {self.lr:g})"
            )
        return f"the training diverging in fp32, most likely: lower train.lr (now {self.lr:g})"
