"""The Diffusion-based Data Amplifier (DDA): Stable Diffusion 1.5 + LoRA + RDM + FGMM.

TinyBeauty (ECCV 2024, Sec. 3.2). Stage 2 (`dda_training.py`) trains it on five before/after pairs;
stage 3 (`dda_amplify.py`) loads it with `models.dda_io.load_dda` and calls `DDA.img2img` on thousands
of faces. This file is the module and its diffusion arithmetic only: loading SD 1.5 (hub id or folder)
is `models/sd_base.py`, saving and loading a trained DDA is `models/dda_io.py`.

How the source conditions the generation (image-to-image, as the official release):
the source latent is noised to `strength` (0.3) and denoised with DDIM over the timesteps that
`num_steps` (10) visits from there (201, 101, 1 for SD's scheduler). Training uses exactly those
timesteps, on the path an ideal DDIM run from the noised source to the target latent would take
(`ddim_path`): with z_S, z_T the source and target latents, t0 the first visited timestep, eps
Gaussian noise and a_end the alpha DDIM's last step lands on (1, or alphas_cumprod[0] with SD 1.5's
`set_alpha_to_one: false`), the pair (x0_path, eps_path) solves

    sqrt(a_t0) x0_path + sqrt(1 - a_t0) eps_path = sqrt(a_t0) z_S + sqrt(1 - a_t0) eps   (the noised source)
    sqrt(a_end) x0_path + sqrt(1 - a_end) eps_path = z_T                               (where sampling ends)

and x_t = sqrt(a_t) x0_path + sqrt(1 - a_t) eps_path at every visited t. A UNet that predicts eps_path
at each x_t turns deterministic DDIM from the noised source into exactly z_T, for either scheduler
config. The diffusion loss is the usual MSE between predicted and target noise (`noise_pred`,
`noise_target`). Sampling defaults to the strength, step count and scheduler the DDA was trained with
(recorded in its checkpoint); an override that differs is logged.

The pixel side (RDM, FGMM, eyeliner): the latent DDIM would end on from the current prediction is
decoded, RDM adds the texture residual `alpha * (S - S')` (S' the base model's own reconstruction of
the source, see models/rdm.py), and FGMM weights the resulting makeup signal per region before it is
added to the source:

    styled    = decode(end_lora) + alpha * (S - decode(end_base))
    composite = S + FGMM(styled - S, makeup_mask)

so background and weight-0 regions are the source exactly. At amplification the source latents are
also copied back into regions that get no makeup after every denoising step (as the official
release does), so the model spends its effort where the makeup goes.

Latents use the VAE posterior's mean (not a sample), so the same source gives the same latent (stage 2
encodes each seed pair once per run and reuses the latents: `models.dda_optim.LatentCache`).

Precision: the UNet and text encoder run in the dtype they were loaded in (fp16 on a GPU). The VAE
runs in fp32 when `vae_upcast` says so (`model.vae_upcast`: auto follows the VAE config's
`force_upcast`, true for SD 1.5, as diffusers' pipelines decide): its weights are kept in fp32 and it
encodes and decodes outside autocast, where an fp16 decode can overflow to inf.

Other sizes: a source larger or smaller than the DDA's training resolution is brought to that
resolution, made up there, and the makeup change (output - source) is resized back and added to the
full-size source: the DDA works at the scale it learned, and the full-size face keeps every pixel of
its own detail (the RDM idea applied across resolutions).
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from errors import ConfigError, ModelError
from models.fgmm import FGMM, REGIONS
from models.rdm import RDM
from models.region_conditioning import RegionConditioning, region_maps

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # attention only, as diffusers' LoRA examples
SCHEDULERS = ("ddim", "euler_ancestral")
# The official release's sampling settings: what a DDA trains and samples with unless its config says otherwise.
DEFAULT_STRENGTH = 0.3
DEFAULT_NUM_STEPS = 10
DEFAULT_SCHEDULER = "ddim"
VAE_UPCAST = ("auto", "true", "false")  # model.vae_upcast


def resolve_vae_upcast(value, vae) -> bool:
    """`model.vae_upcast` as a bool: auto follows the VAE config's `force_upcast` (diffusers' default: true)."""
    word = str(value).strip().lower()
    if word == "auto":
        return bool(getattr(vae.config, "force_upcast", True))
    if word in ("true", "false"):
        return word == "true"
    raise ConfigError(f"config key 'model.vae_upcast' must be {', '.join(VAE_UPCAST)}, not {value!r}")


def add_lora(
    unet: nn.Module, rank: int, lora_alpha: float, target_modules: list[str] | None = None, dropout: float = 0.0
) -> None:
    """LoRA through peft as diffusers' LoRA examples add it; `target_modules` are module-name suffixes
    (default: the attention projections; `lora.target_modules` in configs/dda.yaml adds the convolutions).
    `dropout`: peft's lora_dropout on the LoRA branch's input, active in train mode only."""
    # peft imports transformers (seconds): loaded when the LoRA is used
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(
            r=int(rank),
            lora_alpha=float(lora_alpha),
            lora_dropout=float(dropout),
            init_lora_weights="gaussian",
            target_modules=list(target_modules or LORA_TARGET_MODULES),
        )
    )


def make_inference_scheduler(noise_scheduler, name: str):
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    # clip_sample off: SD 1.5's scheduler folder (PNDM) has no clip_sample key, so DDIM would default to
    # clamping the predicted x0 to [-1, 1], and latents are not images (about unit variance, unbounded).
    if name == "ddim":
        return DDIMScheduler.from_config(noise_scheduler.config, clip_sample=False)
    if name == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config)
    raise ValueError(f"unknown scheduler '{name}' (expected one of {', '.join(SCHEDULERS)})")


def visited_timesteps(scheduler, strength: float, num_steps: int, device=None) -> torch.Tensor:
    """The timesteps image-to-image at `strength` visits (diffusers' img2img get_timesteps); sets begin index."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    scheduler.set_timesteps(int(num_steps), device=device)
    init_steps = min(int(num_steps * strength), num_steps)
    if init_steps < 1:
        raise ValueError(f"strength {strength} with {num_steps} steps visits no timestep: raise one of them")
    t_start = max(num_steps - init_steps, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


# --------------------------------------------------------------------------------------------
# The DDA
# --------------------------------------------------------------------------------------------


def ddim_path(z_source, z_target, noise, a_start: float, a_end: float):
    """The (x0, eps) pair of the deterministic DDIM path from the noised source to the target.

    DDIM keeps (x0, eps) fixed along a path x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Image-to-image
    starts at the noised source, x_start = sqrt(a_start) z_S + sqrt(1 - a_start) noise, and its last
    step returns sqrt(a_end) x0 + sqrt(1 - a_end) eps, a_end being the scheduler's final alpha (1 with
    set_alpha_to_one; SD 1.5's folder says false: alphas_cumprod[0] = 0.99915). Asking the path to end
    at z_T gives two equations per element:

        sqrt(a_start) x0 + sqrt(1 - a_start) eps = x_start
        sqrt(a_end)   x0 + sqrt(1 - a_end)   eps = z_T

    With a_end = 1: x0 = z_T and eps = noise + sqrt(a_start / (1 - a_start)) (z_S - z_T).
    """
    s0, n0 = a_start**0.5, (1 - a_start) ** 0.5
    s1, n1 = a_end**0.5, (1 - a_end) ** 0.5
    x_start = s0 * z_source + n0 * noise
    det = s0 * n1 - n0 * s1
    x0 = (n1 * x_start - n0 * z_target) / det
    eps = (s0 * z_target - s1 * x_start) / det
    return x0, eps


def _ddim_end(noisy, noise_pred, a_t, a_end: float):
    """Where deterministic DDIM lands after its last step if the prediction stayed on this path."""
    x0 = (noisy - (1 - a_t).sqrt() * noise_pred) / a_t.sqrt()
    return a_end**0.5 * x0 + (1 - a_end) ** 0.5 * noise_pred


def _copy_generator(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


class DDA(nn.Module):
    """SD parts + LoRA (inside the UNet) + RDM (alpha) + FGMM (region weights).

    Trainable: the LoRA weights, `rdm.alpha` and `fgmm.region_weights`; everything of SD is frozen.
    """

    def __init__(
        self,
        base: dict,
        *,
        prompt: str,
        resolution: int,
        lora_rank: int = 16,
        lora_alpha: float = 16.0,
        rdm_alpha: float = 0.5,
        fgmm: dict[str, float] | None = None,
        strength: float = DEFAULT_STRENGTH,
        num_steps: int = DEFAULT_NUM_STEPS,
        scheduler: str = DEFAULT_SCHEDULER,
        lora_targets: list[str] | None = None,
        lora_dropout: float = 0.0,
        region_conditioning: bool = False,
        vae_upcast: str | bool = "auto",
    ):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler '{scheduler}' (expected one of {', '.join(SCHEDULERS)})")
        prediction = base["noise_scheduler"].config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ModelError(
                f"config key 'model.pretrained': {base['pretrained']} predicts '{prediction}' (its scheduler config's "
                "prediction_type), but the DDA's DDIM path and noise loss need an epsilon-predicting UNet such as "
                "SD 1.5's (SD 2.x at 768 px predicts v): use an epsilon model"
            )
        self.pretrained = base["pretrained"]
        self.vae, self.text_encoder, self.tokenizer = base["vae"], base["text_encoder"], base["tokenizer"]
        self.noise_scheduler = base["noise_scheduler"]
        unet = base["unet"]
        self.lora_targets = list(lora_targets or LORA_TARGET_MODULES)
        add_lora(unet, lora_rank, lora_alpha, self.lora_targets, lora_dropout)
        self.rdm = RDM(unet, alpha=rdm_alpha)
        self.fgmm = FGMM(**(fgmm or {}))
        # The face's region map as extra (zero-initialised) conv_in channels: models/region_conditioning.py.
        self.region_conditioning = RegionConditioning(unet.conv_in.out_channels) if region_conditioning else None
        if self.region_conditioning is not None:
            self.region_conditioning.attach(unet)
            self.region_conditioning.to(self.vae.device)
        self.prompt, self.resolution = prompt, int(resolution)
        self.lora_rank, self.lora_alpha = int(lora_rank), float(lora_alpha)
        # The image-to-image setting the DDA is trained on; sampling defaults to it (`sampling_settings`).
        self.strength, self.num_steps, self.scheduler = float(strength), int(num_steps), str(scheduler)
        self._warned: set[str] = set()
        self._prompt_cache: dict[str, torch.Tensor] = {}
        # The mask convention of the pairs it learned from (data.face_parsing.makeup_regions): stage 3 parses alike.
        self.eye_region = "lid"
        self.rdm.to(self.vae.device)
        self.fgmm.to(self.vae.device)
        # The VAE in fp32 when asked (only matters when the model was loaded in fp16 or bf16).
        self.vae_upcast = str(vae_upcast).lower()
        self.upcast_vae = resolve_vae_upcast(vae_upcast, self.vae) and self.vae.dtype != torch.float32
        if self.upcast_vae:
            self.vae.to(torch.float32)

    # ---- parts ---------------------------------------------------------------------------------
    @property
    def unet(self) -> nn.Module:
        return self.rdm.unet

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype: latents and text embeddings enter the UNet in it (the VAE may be upcast to fp32)."""
        return self.unet.conv_in.weight.dtype

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The groups that train: LoRA weights, RDM alpha, FGMM region weights (and the region conditioning)."""
        lora = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        groups = {"lora": lora, "rdm_alpha": [self.rdm.alpha], "fgmm": [self.fgmm.region_weights]}
        if self.region_conditioning is not None:
            groups["region_conditioning"] = list(self.region_conditioning.parameters())
        return groups

    def set_trainable(self) -> None:
        """Freeze everything, then unfreeze exactly the LoRA, RDM alpha and FGMM weights."""
        self.requires_grad_(False)
        for group in self.trainable_parameters().values():
            for p in group:
                p.requires_grad_(True)

    # Meaningful ranges of the learned scalars, enforced after every optimizer step (`clamp_scalars`):
    # alpha is the share of the lost texture that RDM gives back (1 = all of it); a region weight
    # scales the makeup the LoRA paints (0 = none; a negative weight would paint the opposite colour).
    ALPHA_RANGE = (0.0, 1.0)
    REGION_WEIGHT_RANGE = (0.0, 2.0)

    @torch.no_grad()
    def clamp_scalars(self) -> None:
        self.rdm.alpha.clamp_(*self.ALPHA_RANGE)
        self.fgmm.region_weights.clamp_(*self.REGION_WEIGHT_RANGE)

    def sampling_settings(self, strength=None, num_steps=None, scheduler=None) -> dict:
        """strength, num_steps, scheduler: the trained ones unless given; a differing override is logged once."""
        trained = {"strength": self.strength, "num_steps": self.num_steps, "scheduler": self.scheduler}
        given = {"strength": strength, "num_steps": num_steps, "scheduler": scheduler}
        settings = {}
        for key, value in given.items():
            settings[key] = trained[key] if value is None else type(trained[key])(value)
            if value is not None and settings[key] != trained[key] and key not in self._warned:
                self._warned.add(key)
                logging.getLogger("makeup").warning(
                    "sampling with %s=%s, but the DDA was trained with %s=%s: training and sampling no longer "
                    "follow the same path (leave it unset to use the trained value)",
                    key,
                    settings[key],
                    key,
                    trained[key],
                )
        return settings

    # ---- encoders ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str | None = None) -> torch.Tensor:
        """(1, 77, D) text embeddings of `prompt` (default: the style prompt), cached."""
        prompt = self.prompt if prompt is None else prompt
        if prompt not in self._prompt_cache:
            ids = self.tokenizer(
                prompt,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            self._prompt_cache[prompt] = self.text_encoder(ids)[0]
        return self._prompt_cache[prompt]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) scaled latents (posterior mean) in the UNet's dtype."""
        with self._vae_precision():
            posterior = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
            return (posterior.mean * self.vae.config.scaling_factor).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, H, W) images (not clamped), in fp32 when the VAE is upcast."""
        with self._vae_precision():
            return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def _vae_precision(self):
        """Autocast off around an upcast VAE (autocast would run its convolutions in fp16 again)."""
        if not self.upcast_vae:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def fuse_lora(self) -> DDA:
        """For sampling only (stage 3): two plain copies of the UNet, one with the LoRA merged into its weights (the
        styled run) and one without it (the base run S'), which every later UNet call uses instead.

        peft's LoRA layers run two small extra matmuls and their own bookkeeping per layer, and its switch for the
        base run walks the whole UNet: on the prior on one quiet CPU thread a UNet call at batch 4 takes 0.233 s
        with the LoRA on, 0.204 s off and 0.208 s merged; stage 3 as a whole gains less than its run-to-run spread
        (docs/decisions.md, `dda_amplify: model.fuse_lora`). The results agree with the unfused DDA to float
        rounding, not bit for bit. It costs two more UNets' memory (SD 1.5 in fp16: 3.4 GB). Training needs the
        unfused DDA.
        """
        from peft.tuners.tuners_utils import BaseTunerLayer

        copies = {}
        for name, merge in (("styled", True), ("base", False)):
            unet = copy.deepcopy(self.unet)
            unet.conv_in._forward_hooks.clear()  # the region conditioning is attached again below (styled only)
            for path, module in list(unet.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    if merge:
                        module.merge()
                    parent, _, child = path.rpartition(".")
                    setattr(unet.get_submodule(parent), child, module.get_base_layer())
            copies[name] = unet.requires_grad_(False).eval()
        if self.region_conditioning is not None:
            self.region_conditioning.attach(copies["styled"])
        self.rdm.fused = copies
        return self

    def predict_noise(self, noisy, timesteps, text, *, use_lora: bool = True, regions: torch.Tensor | None = None):
        """The UNet's noise prediction: the styled model (LoRA on, and the face's region maps when the DDA is
        region-conditioned) or the base model (LoRA off, no region maps: the base model's own run)."""
        conditioned = self.region_conditioning is not None and use_lora and regions is not None
        context = self.region_conditioning.given(regions) if conditioned else contextlib.nullcontext()
        with context:
            return self.rdm(noisy, timesteps, text, use_lora=use_lora)

    def region_maps(self, makeup_mask: torch.Tensor | None, latent_hw) -> torch.Tensor | None:
        """(B, 3, h, w) soft region maps of the mask at the latent size, or None when not region-conditioned."""
        if self.region_conditioning is None or makeup_mask is None:
            return None
        return region_maps(makeup_mask.to(self.device), latent_hw).to(self.dtype)

    # ---- training ------------------------------------------------------------------------------
    def training_timesteps(self) -> torch.Tensor:
        return visited_timesteps(make_inference_scheduler(self.noise_scheduler, "ddim"), self.strength, self.num_steps)

    def final_alpha(self) -> float:
        """alpha_cumprod where DDIM's last step lands: 1 with set_alpha_to_one, alphas_cumprod[0] (SD 1.5) without."""
        return float(make_inference_scheduler(self.noise_scheduler, "ddim").final_alpha_cumprod)

    def training_forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        makeup_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        latents: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One training forward on a batch (see the module docstring for the path it trains on).

        source, target: (B, 3, H, W) in [-1, 1]; makeup_mask: (B, H, W) labels; latents: their
        (z_source, z_target) when the caller has them (stage 2's latent cache), else encoded here. Returns the noise
        prediction and its target (diffusion loss), `styled` (RDM output) and `composite` (source +
        FGMM-weighted makeup signal), both (B, 3, H, W), and the timesteps used.
        """
        batch = source.shape[0]
        source = source.to(self.device, torch.float32)
        visited = self.training_timesteps()
        pick = torch.randint(len(visited), (batch,), generator=generator)
        timesteps = visited[pick].to(self.device).long()
        if latents is None:
            with torch.no_grad():
                latents = self.encode(source), self.encode(target)
        z_source, z_target = latents
        noise = torch.randn(z_source.shape, generator=generator).to(z_source)

        abar = self.noise_scheduler.alphas_cumprod.to(self.device, torch.float32)
        a_t = abar[timesteps].view(-1, 1, 1, 1)
        # from the scheduler's own (CPU) table: no device sync, and the same float32 value
        a_0, a_end = float(self.noise_scheduler.alphas_cumprod[visited[0]]), self.final_alpha()
        x0_path, noise_path = ddim_path(z_source.float(), z_target.float(), noise, a_0, a_end)
        noisy = (a_t.sqrt() * x0_path + (1 - a_t).sqrt() * noise_path).to(self.dtype)
        noisy_source = (a_t.sqrt() * z_source.float() + (1 - a_t).sqrt() * noise).to(self.dtype)
        text = self.encode_prompt().expand(batch, -1, -1)

        regions = self.region_maps(makeup_mask, z_source.shape[-2:])
        noise_pred = self.predict_noise(noisy, timesteps, text, regions=regions)
        end_pred = _ddim_end(noisy.float(), noise_pred.float(), a_t, a_end)
        with torch.no_grad():  # S': the base model's own reconstruction of the source
            base_pred = self.predict_noise(noisy_source, timesteps, text, use_lora=False)
            end_base = _ddim_end(noisy_source.float(), base_pred.float(), a_t, a_end)
            reconstruction = self.decode(end_base).float()
        decoded = self.decode(end_pred).float()
        styled = self.rdm.restore(decoded, source, reconstruction)
        composite = source + self.fgmm(styled - source, makeup_mask.to(self.device))
        return {
            "noise_pred": noise_pred.float(),
            "noise_target": noise_path,
            "styled": styled,
            "composite": composite,
            "timesteps": timesteps,
        }

    # ---- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _denoise(
        self,
        z_source: torch.Tensor,
        editable: torch.Tensor | None,
        *,
        use_lora: bool,
        regions: torch.Tensor | None = None,
        strength: float,
        num_steps: int,
        scheduler: str,
        guidance_scale: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Image-to-image denoising of source latents; returns clean latents."""
        # diffusers takes seconds to import: loaded when a model is built
        from diffusers.utils.torch_utils import randn_tensor

        sched = make_inference_scheduler(self.noise_scheduler, scheduler)
        timesteps = visited_timesteps(sched, strength, num_steps, device=self.device)
        noise = randn_tensor(z_source.shape, generator=generator, device=self.device, dtype=z_source.dtype)
        latents = sched.add_noise(z_source, noise, timesteps[:1].repeat(z_source.shape[0]))
        batch = z_source.shape[0]
        text = self.encode_prompt().to(self.dtype).expand(batch, -1, -1)
        if guidance_scale > 1.0:
            text = torch.cat([self.encode_prompt("").to(self.dtype).expand(batch, -1, -1), text])
        for i, t in enumerate(timesteps):
            model_in = torch.cat([latents] * 2) if guidance_scale > 1.0 else latents
            model_in = sched.scale_model_input(model_in, t)
            noise_pred = self.predict_noise(model_in, t, text, use_lora=use_lora, regions=regions)
            if guidance_scale > 1.0:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(noise_pred, t, latents, generator=generator).prev_sample
            if editable is not None:  # copy the source back where no makeup goes (official release)
                if i + 1 < len(timesteps):
                    known = sched.add_noise(z_source, noise, timesteps[i + 1 : i + 2].repeat(batch))
                else:
                    known = z_source
                latents = editable * latents + (1 - editable) * known
        return latents

    def _editable_latent_mask(self, weight_map: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) pixel weights -> (B, 1, h, w) 0/1 latent mask of cells touching any makeup, grown by one."""
        touched = F.adaptive_max_pool2d((weight_map != 0).float(), latent_hw)
        return F.max_pool2d(touched, 3, stride=1, padding=1)

    @torch.no_grad()
    def makeup_signal(
        self,
        source: torch.Tensor,
        makeup_mask: torch.Tensor | None = None,
        *,
        region_weights: dict[str, float] | None = None,
        strength: float | None = None,
        num_steps: int | None = None,
        scheduler: str | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """The styled image before FGMM compositing: decode(LoRA run) + alpha * (S - decode(base run)), its change
        turned by FGMM's colour matrices where they are set (with a mask).

        (B, 3, H, W) in float32, not clamped. With a mask, source latents are copied back outside the
        regions whose weight is non-zero while denoising. Use `composite` to place it (or several
        styles' outputs, one per region) on the source.
        """
        source = source.to(self.device, torch.float32)
        z_source = self.encode(source)
        editable = None
        if makeup_mask is not None:
            weight_map = self.fgmm.weight_map(makeup_mask.to(self.device), region_weights)
            editable = self._editable_latent_mask(weight_map, tuple(z_source.shape[-2:])).to(z_source.dtype)
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        # The base run (S') sees the very same noise as the LoRA run. A list holds one generator per
        # face (stage 3 seeds each face on its own, so a face's result does not depend on its batch).
        base_generator = (
            [_copy_generator(g) for g in generator] if isinstance(generator, list) else _copy_generator(generator)
        )
        settings = self.sampling_settings(strength, num_steps, scheduler)
        settings["guidance_scale"] = guidance_scale
        regions = self.region_maps(makeup_mask, z_source.shape[-2:])
        styled_latents = self._denoise(
            z_source, editable, use_lora=True, regions=regions, generator=generator, **settings
        )
        base_latents = self._denoise(z_source, editable, use_lora=False, generator=base_generator, **settings)
        decoded = self.decode(styled_latents).float()
        reconstruction = self.decode(base_latents).float()
        styled = self.rdm.restore(decoded, source, reconstruction)
        if makeup_mask is not None:  # FGMM's fitted colour matrices (identity: styled as it is, bit for bit)
            change = styled - source
            recoloured = self.fgmm.recolour(change, makeup_mask)
            if recoloured is not change:
                styled = source + recoloured
        return styled

    def composite(
        self,
        source: torch.Tensor,
        styled: torch.Tensor | dict[str, torch.Tensor],
        makeup_mask: torch.Tensor,
        region_weights: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """source + FGMM(styled - source), clamped to [-1, 1]; the source exactly where the weight is 0.

        `styled` may map region names to styled images (makeup combination: lips from one trained
        style, eyes from another); a region missing from the map gets no makeup.
        """
        source = source.to(self.device, torch.float32)
        makeup_mask = makeup_mask.to(self.device)
        if isinstance(styled, dict):
            unknown = set(styled) - set(REGIONS)
            if unknown:
                raise ValueError(f"unknown region(s) {sorted(unknown)} (expected {', '.join(REGIONS)})")
            signal = torch.zeros_like(source)
            for region, image in styled.items():
                in_region = (makeup_mask == REGIONS.index(region) + 1).unsqueeze(1)
                signal = torch.where(in_region, image.to(source) - source, signal)
        else:
            signal = styled.to(source) - source
        result = source + self.fgmm(signal, makeup_mask, region_weights)
        return result.clamp(-1, 1)

    @torch.no_grad()
    def img2img(
        self,
        source: torch.Tensor,
        makeup_mask: torch.Tensor,
        *,
        region_weights: dict[str, float] | None = None,
        strength: float | None = None,
        num_steps: int | None = None,
        scheduler: str | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) source in [-1, 1] and (B, H, W) labels 0-3 -> (B, 3, H, W) made-up faces in [-1, 1].

        Equals the source bit for bit wherever the mask is background or the effective region weight
        (learned FGMM weight, or `region_weights[region]`) is 0. Same generator seed, same output.
        strength, num_steps, scheduler: None = what the DDA was trained with. A source of another size
        than `self.resolution` is made up at that resolution and gets the resized makeup change.
        """
        if source.ndim != 4 or makeup_mask.shape != (source.shape[0], *source.shape[-2:]):
            raise ValueError(
                f"source must be (B, 3, H, W) and makeup_mask (B, H, W); got {tuple(source.shape)} and "
                f"{tuple(makeup_mask.shape)}"
            )
        settings = dict(
            region_weights=region_weights,
            strength=strength,
            num_steps=num_steps,
            scheduler=scheduler,
            guidance_scale=guidance_scale,
            generator=generator,
        )
        if source.shape[-1] != self.resolution or source.shape[-2] != self.resolution:
            return self._img2img_resized(source, makeup_mask, **settings)
        styled = self.makeup_signal(source, makeup_mask, **settings)
        return self.composite(source, styled, makeup_mask, region_weights)

    def _img2img_resized(self, source: torch.Tensor, makeup_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """img2img at the training resolution; the change is resized back onto the full-size source."""
        size = (self.resolution, self.resolution)
        source = source.to(self.device, torch.float32)
        makeup_mask = makeup_mask.to(self.device)
        small = F.interpolate(source, size=size, mode="area" if source.shape[-1] > size[-1] else "bilinear")
        small_mask = F.interpolate(makeup_mask[:, None].float(), size=size, mode="nearest")[:, 0].long()
        change = self.img2img(small, small_mask, **kwargs) - small
        change = F.interpolate(change, size=source.shape[-2:], mode="bilinear", align_corners=False)
        weight = self.fgmm.weight_map(makeup_mask, kwargs.get("region_weights"))
        change = torch.where(weight == 0, torch.zeros_like(change), change)
        return (source + change).clamp(-1, 1)

    # ---- saving and loading --------------------------------------------------------------------
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        # peft imports transformers (seconds): loaded when the LoRA is used
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.unet).items()}

    def settings(self) -> dict:
        """What `load_dda` needs besides the weights (JSON-friendly)."""
        return {
            "pretrained": self.pretrained,
            "prompt": self.prompt,
            "resolution": self.resolution,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "strength": self.strength,
            "num_steps": self.num_steps,
            "scheduler": self.scheduler,
            "lora_targets": self.lora_targets,
            "rdm_alpha": float(self.rdm.alpha.detach()),
            "fgmm": self.fgmm.weights(),
            "fgmm_colour": self.fgmm.colours(),
            "region_conditioning": self.region_conditioning is not None,
            "eye_region": self.eye_region,
            "vae_upcast": self.vae_upcast,
        }

    def state(self) -> dict:
        """The trained part for a checkpoint: LoRA weights, RDM and FGMM state, region conditioning, settings."""
        state = {
            "settings": self.settings(),
            "lora": self.lora_state_dict(),
            "rdm_alpha": self.rdm.alpha.detach().cpu().clone(),
            "fgmm": {k: v.detach().cpu().clone() for k, v in self.fgmm.state_dict().items()},
        }
        if self.region_conditioning is not None:
            state["region_conditioning"] = self.region_conditioning_state()
        return state

    def region_conditioning_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.region_conditioning.state_dict().items()}

    def load_state(self, state: dict) -> None:
        # peft imports transformers (seconds): loaded when the LoRA is used
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.unet, state["lora"])
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"LoRA weights do not fit this UNet (unexpected keys, e.g. {unexpected[0]})")
        with torch.no_grad():
            self.rdm.alpha.copy_(state["rdm_alpha"])
        self.fgmm.load_state_dict(state["fgmm"])
        if self.region_conditioning is not None:
            self.load_region_conditioning(state.get("region_conditioning"))

    def load_region_conditioning(self, weights: dict[str, torch.Tensor] | None) -> None:
        if weights is None:
            raise ValueError("the DDA is region-conditioned, but the saved state holds no region conditioning weights")
        saved, own = tuple(weights["conv.weight"].shape), tuple(self.region_conditioning.conv.weight.shape)
        if saved != own:
            raise ValueError(
                f"its region conditioning was trained for a conv_in with {saved[0]} output channels "
                f"({saved[1]} region channels), but the base model '{self.pretrained}' has a conv_in with {own[0]}: "
                "load it on the base model it was trained on (model.pretrained)"
            )
        self.region_conditioning.load_state_dict(weights)
