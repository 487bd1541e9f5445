"""Memory and FLOPs of one DDA training step and one amplification, counted on torch's meta device.

    from bench.meta_accounting import account_training_step, meta_base_sd15
    account_training_step(meta_base_sd15(torch.float16), cfg, batch_size=1, precision="fp16", target="cuda")

No weights are written and nothing is computed: the SD parts are built from their configs on the meta
device (shapes only), and the project's own code runs on them unchanged: `models.dda_optim.train_step`
(the training forward, the loss, backward, clipping, Adam) and `DDA.img2img`. A TorchDispatchMode sees
every operator's output; a new storage counts from its creation until Python frees it (a weak
reference on the storage), as an allocator sees it, so the running sum and its peak are what the step
allocates beyond the weights. Autograd's saved tensors, the gradients and Adam's state are all operator
outputs, so they count; an output that is an input's storage (a view, an in-place update) does not.
Sizes are rounded up as the allocator rounds them (512 bytes on CUDA, 64 on the CPU). FLOPs come from
torch's FlopCounterMode (convolutions, matmuls and attention, forward and backward) in a run of their own.

What the meta device does not do by itself is emulated, for the device the figures are for (`target`):
- CUDA autocast (`model.mixed_precision=fp16`): a TorchFunctionMode applies CUDA autocast's op lists to
  the functions the DDA calls (fp16: convolutions, linear, matmul, attention; fp32: group and layer
  norm, upsampling, losses, exp/log/pow/rsqrt; softmax and sum accumulate in fp32), casting inputs as
  autocast does and caching the fp16 copies of trainable weights for the autocast region. A
  `torch.autocast("meta", ...)` in the code (train_step, the upcast VAE) switches it.
- The attention kernel: on meta, SDPA would take its math path, which keeps the whole attention matrix.
  The kernel the target picks runs instead: memory-efficient attention on CUDA (a V100 is sm70, and
  torch's SDPA has flash attention for sm80 and newer only; the efficient kernel saves the output and
  the log-sum-exp, not the matrix) and `_scaled_dot_product_flash_attention_for_cpu` on a CPU.
- `.item()` of a meta tensor answers 0, and True for a bool (the loss values the step returns for logging,
  and its finiteness check).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from losses.dda import DDALoss
from models import sd15_shaped
from models.dda import DDA
from models.dda_io import build_dda
from models.dda_optim import build_optimizer, prepare_training, train_step
from models.sd_base import frozen_base
from models.tiny_sd import sd15_scheduler

GIB = 2**30
ALLOCATION_GRANULE = {"cuda": 512, "cpu": 64}  # CUDA's caching allocator rounds to 512 B; CPU allocations align to 64


# --------------------------------------------------------------------------------------------
# Counting live bytes
# --------------------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """The bytes of every storage an operator creates, from creation until it is freed; `peak` the most at once."""

    def __init__(self, granule: int = 512):
        super().__init__()
        self.granule = granule
        self.live = 0
        self.peak = 0
        self.allocations = 0
        self._alive: set[int] = set()

    def reset_peak(self) -> int:
        """Start a new peak from the bytes live now; returns them."""
        self.peak = self.live
        return self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if _has_storage(t)}
        for tensor in tree_leaves(out):
            if _has_storage(tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self._alive:
                    self._count(storage)
        return out

    def _count(self, storage) -> None:
        size = -(-storage.nbytes() // self.granule) * self.granule
        key = id(storage)
        self._alive.add(key)
        self.live += size
        self.allocations += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._alive.discard(key)
        self.live -= size


class MetaScalars(TorchDispatchMode):
    """`.item()` of a meta tensor: True for a bool (the step's finiteness check passes), else 0 (logged values)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 0
        return func(*args, **(kwargs or {}))


def _has_storage(value) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided


# --------------------------------------------------------------------------------------------
# CUDA autocast and the attention kernel, for meta tensors
# --------------------------------------------------------------------------------------------
_FP16 = {
    torch.conv1d,
    torch.conv2d,
    torch.conv3d,
    F.conv_transpose2d,
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.baddbmm,
    torch.Tensor.baddbmm,
    torch.addmm,
    torch.einsum,
}
_FP32 = {
    F.group_norm,
    F.layer_norm,
    F.interpolate,
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.softplus,
    torch.exp,
    torch.Tensor.exp,
    torch.log,
    torch.Tensor.log,
    torch.pow,
    torch.Tensor.pow,
    torch.Tensor.__pow__,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.cumsum,
    torch.Tensor.cumsum,
    torch.norm,
    torch.Tensor.norm,
    torch.linalg.vector_norm,
}
_FP32_OUT = {torch.softmax, F.softmax, torch.Tensor.softmax, F.log_softmax, torch.sum, torch.Tensor.sum}


class MetaDevicePolicy(TorchFunctionMode):
    """CUDA autocast's casts (while a `torch.autocast("meta")` says so) and the target's attention kernel."""

    def __init__(self, target: str):
        super().__init__()
        if target not in ALLOCATION_GRANULE:
            raise ValueError(f"target must be one of {', '.join(ALLOCATION_GRANULE)}, not {target!r}")
        self.target = target
        self.autocast: list[torch.dtype | None] = []  # the stack of autocast regions: dtype, or None when off
        self._weight_casts: dict[int, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype | None:
        return self.autocast[-1] if self.autocast else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        low = self.dtype
        if func is F.scaled_dot_product_attention:
            if low is not None:
                args, kwargs = self._cast((args, kwargs), low)
            return self._attention(*args, **kwargs)
        if low is not None:
            if func in _FP16:
                args, kwargs = self._cast((args, kwargs), low)
            elif func in _FP32:
                args, kwargs = self._cast((args, kwargs), torch.float32)
            elif func in _FP32_OUT and "dtype" not in kwargs and _first_tensor(args).dtype == low:
                kwargs = {**kwargs, "dtype": torch.float32}
        return func(*args, **kwargs)

    def _cast(self, tree, dtype: torch.dtype):
        def cast(value):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
                return value
            if value.dtype == torch.float64:
                return value  # autocast leaves float64 alone
            if value.is_leaf and value.requires_grad:  # autocast caches the casts of trainable weights
                key = id(value)
                if key not in self._weight_casts:
                    self._weight_casts[key] = value.to(dtype)
                return self._weight_casts[key]
            return value.to(dtype)

        args, kwargs = tree
        return tuple(_map(cast, a) for a in args), {k: _map(cast, v) for k, v in kwargs.items()}

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if self.target == "cpu":
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
            )[0]
        bias = attn_mask
        if bias is not None:
            if bias.dtype == torch.bool:
                bias = torch.zeros(bias.shape, dtype=q.dtype, device=q.device).masked_fill(~bias, float("-inf"))
            bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, grad, dropout_p, is_causal, scale=scale
        )[0]

    @contextlib.contextmanager
    def region(self, enabled: bool, dtype: torch.dtype | None):
        self.autocast.append(dtype if enabled else None)
        try:
            yield
        finally:
            self.autocast.pop()
            if not any(self.autocast):
                self._weight_casts.clear()


def _map(fn, value):
    if isinstance(value, (list, tuple)):
        return type(value)(_map(fn, v) for v in value)
    return fn(value)


def _first_tensor(args) -> torch.Tensor:
    return next(t for t in tree_leaves(args) if isinstance(t, torch.Tensor))


_ACTIVE: list[MetaDevicePolicy] = []  # the policy of the meta_device() block running now


@contextlib.contextmanager
def meta_device(target: str, count: str):
    """MetaDevicePolicy on (`torch.autocast("meta", ...)` drives it), with LiveBytes (`count="memory"`),
    FlopCounterMode (`count="flops"`) or nothing (`"none"`) as the counter it yields. Never both in one run: FlopCounterMode's
    module tracker keeps gradient hooks on module outputs until it exits, which keeps the activations that
    gradient checkpointing recomputes alive, and so inflates the memory it would be counted beside."""
    policy = MetaDevicePolicy(target)
    original = torch.autocast

    def autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
        if device_type == "meta":
            return policy.region(enabled, dtype or torch.float16)
        return original(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    counters = {"memory": lambda: LiveBytes(ALLOCATION_GRANULE[target]), "none": contextlib.nullcontext}
    counter = counters.get(count, lambda: FlopCounterMode(display=False))()
    torch.autocast = autocast
    _ACTIVE.append(policy)
    try:
        with policy, MetaScalars(), counter:
            yield counter
    finally:
        _ACTIVE.pop()
        torch.autocast = original


# --------------------------------------------------------------------------------------------
# SD parts on the meta device
# --------------------------------------------------------------------------------------------
def meta_base_sd15(dtype: torch.dtype) -> dict:
    """SD 1.5's parts (models/sd15_shaped.py's configs) on the meta device in `dtype`, as load_base_model gives them."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import DDPMScheduler

    tokenizer = sd15_shaped.build_tokenizer(_scratch_dir())
    unet, vae = sd15_shaped.build_unet("meta"), sd15_shaped.build_vae("meta")
    text_encoder = sd15_shaped.build_text_encoder("meta")
    scheduler = DDPMScheduler.from_config(sd15_scheduler().config)  # as load_base_model reads SD 1.5's folder
    return frozen_base(
        unet, vae, text_encoder, tokenizer, scheduler, pretrained="SD-1.5-shaped (meta)", device="meta", dtype=dtype
    )


def meta_base_folder(folder: str | Path, dtype: torch.dtype) -> dict:
    """The parts of a diffusers SD folder built from its configs on the meta device (no weights read)."""
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    # transformers takes seconds to import: loaded when a model is built
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = str(folder)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    if tokenizer.model_max_length > 1000:  # as load_base_model
        tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return frozen_base(unet, vae, text_encoder, tokenizer, scheduler, pretrained=folder, device="meta", dtype=dtype)


def _scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sd15_tokenizer_"))


# --------------------------------------------------------------------------------------------
# Accounting one training step and one amplification
# --------------------------------------------------------------------------------------------
@dataclass
class Accounting:
    weights: dict[str, int]  # bytes: frozen base (UNet, VAE, text encoder) and trainable
    trainable_state: int  # bytes kept between steps for the trainable weights: Adam's two moments (training only)
    activation_peak: int  # bytes: the most the step holds at once beyond the weights and that state
    flops: int  # of the whole step (forward and backward)
    allocations: int  # storages the step created

    def total(self) -> int:
        return sum(self.weights.values()) + self.trainable_state + self.activation_peak

    def as_dict(self) -> dict:
        return {
            "weights_gib": {k: round(v / GIB, 3) for k, v in self.weights.items()},
            "weights_total_gib": round(sum(self.weights.values()) / GIB, 3),
            "adam_state_gib": round(self.trainable_state / GIB, 3),
            "activation_peak_gib": round(self.activation_peak / GIB, 3),
            "allocated_peak_gib": round(self.total() / GIB, 3),
            "tflops": round(self.flops / 1e12, 3),
            "allocations": self.allocations,
        }


def weight_bytes(dda: DDA) -> dict[str, int]:
    trainable = {id(p) for group in dda.trainable_parameters().values() for p in group}
    sizes = {"unet": 0, "vae": 0, "text_encoder": 0, "trainable": 0}
    for part, module in (("unet", dda.unet), ("vae", dda.vae), ("text_encoder", dda.text_encoder)):
        for tensor in [*module.parameters(), *module.buffers()]:
            sizes["trainable" if id(tensor) in trainable else part] += tensor.numel() * tensor.element_size()
    sizes["trainable"] += sum(p.numel() * p.element_size() for p in (dda.rdm.alpha, dda.fgmm.region_weights))
    return sizes


def meta_batch(batch_size: int, resolution: int) -> dict:
    """A batch as the data loader gives it (CPU: train_step moves it), with eyes, lips and skin in the mask."""
    mask = torch.full((batch_size, resolution, resolution), 3, dtype=torch.long)
    mask[:, resolution // 4 : resolution // 3, resolution // 5 : resolution // 2] = 1
    mask[:, 2 * resolution // 3 : 3 * resolution // 4, resolution // 3 : 2 * resolution // 3] = 2
    return {
        "source": torch.zeros(batch_size, 3, resolution, resolution),
        "target": torch.zeros(batch_size, 3, resolution, resolution),
        "mask": mask,
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
    }


def _meta_checkpointing(dda: DDA) -> None:
    """Gradient checkpointing as diffusers does it (non-reentrant), with two differences the meta device needs:
    no RNG-state stash (meta has none; a few bytes on CUDA), and the recomputation in backward re-enters the
    emulated autocast and attention kernel of its forward (torch's checkpoint re-enters CUDA's real autocast,
    but runs the recomputation without torch-function modes)."""
    from torch.utils.checkpoint import checkpoint

    def checkpointed(function, *args):
        policy = _ACTIVE[-1]
        dtype = policy.dtype

        @contextlib.contextmanager
        def recompute():  # backward runs without torch-function modes: enter the policy again
            with contextlib.ExitStack() as stack:
                if policy not in _get_current_function_mode_stack():
                    stack.enter_context(policy)
                stack.enter_context(policy.region(dtype is not None, dtype))
                yield

        def contexts():
            return contextlib.nullcontext(), recompute()

        return checkpoint(function, *args, use_reentrant=False, preserve_rng_state=False, context_fn=contexts)

    dda.unet.enable_gradient_checkpointing(checkpointed)
    dda.vae.enable_gradient_checkpointing(checkpointed)


def account_training_step(
    base: dict,
    cfg,
    *,
    batch_size: int,
    precision: str,
    gradient_checkpointing: bool,
    target: str = "cuda",
    vae_upcast: str = "auto",
    count_flops: bool = True,
) -> Accounting:
    """One `train_step` of stage 2 (config `cfg`: LoRA, loss, resolution) on `base` (meta parts in the
    precision's dtype): a first step makes Adam's state (and counts the FLOPs), the second is the one whose
    memory is counted. `count_flops=False` leaves the FLOPs at 0 (the first step then counts nothing)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.vae_upcast = vae_upcast
    dda = prepare_training(build_dda(cfg, device="meta", base=base), gradient_checkpointing=False)
    if gradient_checkpointing:
        _meta_checkpointing(dda)
    dda.train()
    use_fp16 = precision == "fp16"
    batch = meta_batch(batch_size, int(cfg.train.resolution))
    optimizer = build_optimizer(dda, float(cfg.train.lr), float(cfg.train.scalar_lr))
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # its state is a few bytes; meta has no GradScaler kernels
    loss_fn = DDALoss.from_config(cfg).to("meta")
    with meta_device(target, "flops" if count_flops else "none") as flops:  # the first step also makes Adam's state
        train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), use_fp16)
    optimizer.zero_grad(set_to_none=True)
    adam = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.device.type == "meta"
    )
    with meta_device(target, "memory") as live:
        train_step(dda, batch, loss_fn, optimizer, scaler, float(cfg.train.grad_clip), use_fp16)
    step_flops = flops.get_total_flops() if count_flops else 0
    return Accounting(weight_bytes(dda), adam, live.peak, step_flops, live.allocations)


def account_amplification(base: dict, cfg, *, batch_size: int, target: str = "cuda", vae_upcast: str = "auto"):
    """One `DDA.img2img` of `batch_size` faces at the training resolution (stage 3's call, no autocast)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.vae_upcast = vae_upcast
    dda = build_dda(cfg, device="meta", base=base).eval()
    batch = meta_batch(batch_size, int(cfg.train.resolution))
    generators = [torch.Generator().manual_seed(i) for i in range(batch_size)]
    with meta_device(target, "memory") as live:
        dda.encode_prompt()  # cached once per run: not part of a batch
        start = live.reset_peak()
        dda.img2img(batch["source"], batch["mask"], generator=generators)
    with meta_device(target, "flops") as flops:
        dda.img2img(batch["source"], batch["mask"], generator=generators)
    return Accounting(weight_bytes(dda), 0, live.peak - start, flops.get_total_flops(), live.allocations)
