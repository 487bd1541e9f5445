"""Residual Diffusion Model (RDM): give the face its fine detail back after diffusion.

TinyBeauty (ECCV 2024, Sec. 3.2): a latent diffusion model loses a face's fine detail (skin texture,
moles, hair strands) in the VAE and in denoising. The paper restores it as a residual,

    makeup image = decoded diffusion result + (S - S'),

S the source image and S' the model's own reconstruction of it.

How it is done here
- S' is the *base* model's own reconstruction of S: the same image-to-image denoising (same noise,
  same timesteps, same generator) with the LoRA switched off, then decoded. So S - S' holds
  everything the VAE and the base diffusion lose or invent, and what survives in
  `decoded(LoRA) + (S - S')` is the change the LoRA makes: the makeup.
- The residual enters in pixel space, after decoding. In latent space it could not restore what the
  VAE decoder loses (a random tiny VAE loses nearly everything, SD's loses skin texture).
- `alpha` (learnable, initial 0.5 as in the seed) weights the residual:
  `restored = decoded + alpha * (S - S')`. In training, S' is the base UNet's one-step x0
  prediction at the same noisy latent, decoded without gradients, and the pixel losses on the
  restored image (L1 and the eyeliner term, against the target) reach alpha directly: the better the
  residual explains the detail the target shares with the source, the closer alpha goes to 1.
- With the LoRA disabled and alpha = 1 the output is the source up to float rounding; that is the
  unit test of this module.
"""

from __future__ import annotations

import torch
from torch import nn


class RDM(nn.Module):
    """Wraps the (LoRA-carrying) UNet; `alpha` weights the texture residual added to its decoded output."""

    def __init__(self, unet: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.unet = unet
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        # {"styled": UNet with the LoRA merged, "base": UNet without it}, plain modules for sampling only
        # (`DDA.fuse_lora`); a plain dict, so they are neither parameters nor in a saved state
        self.fused: dict[str, nn.Module] | None = None
        # the UNet's peft LoRA layers, found once (walking the UNet's ~1,200 modules on every switch cost
        # 4.4 ms of a 540 ms training step on the prior); a plain list, so not submodules twice over
        self._lora_layers: list[nn.Module] | None = None

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        use_lora: bool = True,
    ) -> torch.Tensor:
        """The UNet's noise prediction, with the LoRA on (the styled model) or off (the base model, for S')."""
        if self.fused is not None:
            if torch.is_grad_enabled():
                raise RuntimeError("a DDA fused for sampling (fuse_lora) cannot train: its LoRA is merged into copies")
            return self.fused["styled" if use_lora else "base"](noisy_latents, timesteps, encoder_hidden_states).sample
        if use_lora:
            return self.unet(noisy_latents, timesteps, encoder_hidden_states).sample
        with self.lora_disabled():
            return self.unet(noisy_latents, timesteps, encoder_hidden_states).sample

    def lora_disabled(self):
        """Context: the UNet's LoRA layers off inside (the base model, S'), back to their previous state after."""
        if self._lora_layers is None:
            self._lora_layers = lora_layers(self.unet)
        return _LoraOff(self._lora_layers)

    def restore(self, decoded: torch.Tensor, source: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """decoded + alpha * (source - reconstruction): (B, 3, H, W) in image space."""
        texture_residual = source - reconstruction
        return decoded + self.alpha.to(decoded.dtype) * texture_residual


def lora_layers(unet: nn.Module) -> list[nn.Module]:
    """The UNet's peft tuner layers (none when no LoRA was added)."""
    if not getattr(unet, "_hf_peft_config_loaded", False):
        return []
    # peft imports transformers (seconds): loaded when the LoRA is used
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


class _LoraOff:
    """Context manager: the given peft layers' adapters off inside, restored to their previous state after.

    Each layer is switched with peft's own `enable_adapters(bool)`, as diffusers' `unet.disable_adapters()` does
    for every tuner layer it finds (it also puts the LoRA weights' requires_grad back on when enabling)."""

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.was_enabled = any(not layer.disable_adapters for layer in layers)

    def __enter__(self):
        if self.was_enabled:
            for layer in self.layers:
                layer.enable_adapters(False)
        return self

    def __exit__(self, *exc):
        if self.was_enabled:
            for layer in self.layers:
                layer.enable_adapters(True)
        return False
