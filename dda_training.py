"""Stage 2: train the Diffusion-based Data Amplifier (DDA) on five before/after pairs.

    python dda_training.py                                    # configs/dda.yaml: SD 1.5, 500 epochs, 512x512
    python dda_training.py data.root=seed_pairs model.pretrained=/models/sd15 output_dir=dda_model
    python dda_training.py --resume dda_model/dda_checkpoint_epoch_100.pt   # continue exactly
    # CPU smoke run on the tiny offline model:
    python -m models.tiny_sd runs/tiny_sd
    python dda_training.py model.pretrained=runs/tiny_sd train.resolution=64 train.epochs=3 wandb.mode=disabled

TinyBeauty (ECCV 2024), Data Amplify Learning, stage 2: Stable Diffusion 1.5 learns one makeup style
from the seed pairs through a LoRA, with the Residual Diffusion Model (RDM, learnable alpha) keeping
the face's fine detail and the Fine-Grained Makeup Module (FGMM, learnable region weights) putting
makeup only on eyes, lips and skin. Stage 3 (`dda_amplify.py`) then makes thousands of pairs with it.
How the source conditions training and generation: see `models/dda.py`.

Loss per step (weights in `loss.*`): diffusion MSE on the predicted noise + region-weighted L1 of
the composite (source + FGMM makeup) against the target + Sobel eyeliner loss in the eye region.

Writes to `output_dir` (default `dda_model/`): `dda_checkpoint_epoch_{E}.pt` every
`train.checkpoint_every` epochs, `sample_epoch_{E}.png` every `train.sample_every` epochs (per seed
pair: source | DDA output | target, plus one face the DDA never saw), `dda_final.pt`,
`pytorch_lora_weights.safetensors` (+ `dda_modules.json`), `summary.json`, `config.yaml`, `train.log`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import (
    WandbLogger,
    atomic_save_image,
    atomic_write_text,
    config_to_dict,
    count_parameters,
    format_seconds,
    from_uint8,
    get_device,
    get_rng_state,
    load_checkpoint,
    log,
    make_grid,
    parse_resumable_args,
    prepare_run_dir,
    require_dir,
    run_cli,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    setup_logging,
    to_uint8,
)
from data.face_parsing import FaceParser
from data.io import ImageReadError, list_images, read_rgb, resize_rgb
from data.makeup_draft import DraftSettings, MakeupDraft, leave_one_out, seed_faces
from data.paired import SKIN, DatasetError, PairedDataset, scan_pairs
from errors import CheckpointError, ConfigError, InputError
from losses.dda import DDALoss
from models.dda import DDA
from models.dda_io import AMPLIFIERS, build_dda, load_dda, save_lora
from models.dda_optim import LatentCache, NonFiniteSteps, build_optimizer, prepare_training, train_step
from models.fgmm import check_region_names, fit_region_colour, fit_region_gains

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "dda.yaml"
SAMPLE_FACES = Path(__file__).resolve().parent / "data" / "samples" / "faces"
MIXED_PRECISION = ("fp16", "no")  # the values of model.mixed_precision


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def seed_eye_region(root: str | Path) -> str:
    """The mask convention of the seed pairs (make_seed_pairs.py records it in summary.json; "lid" otherwise)."""
    summary = Path(root) / "summary.json"
    try:
        return str(json.loads(summary.read_text()).get("eye_region") or "lid") if summary.is_file() else "lid"
    except (OSError, json.JSONDecodeError):
        return "lid"


def _parse_makeup(rgb: np.ndarray, eye_region: str = "lid") -> np.ndarray | None:
    """Makeup-region labels from the face parser (one parser per mask convention, kept for the run)."""
    parsers = _parse_makeup.__dict__.setdefault("parsers", {})
    if eye_region not in parsers:
        parsers[eye_region] = FaceParser(eye_region=eye_region)
    parse = parsers[eye_region].parse(rgb)
    return None if parse is None else np.asarray(parse.makeup, np.uint8)


def _fill_missing_masks(pairs, mask_dir: Path, eye_region: str = "lid") -> None:
    """Pairs without a mask get one from the face parser, written to `mask_dir` (the dataset reads it there)."""
    missing = [pair for pair in pairs if pair.mask is None]
    if not missing:
        return
    log.info("computing makeup masks with the face parser for %d pair(s) -> %s", len(missing), mask_dir)
    for pair in missing:
        makeup = _parse_makeup(read_rgb(pair.source), eye_region)
        if makeup is None:
            log.warning("no face found in %s: training on it without a mask (FGMM treats it all as skin)", pair.source)
            continue
        path = mask_dir / f"{pair.name}.png"
        atomic_save_image(makeup, path)
        pair.mask = path


def _check_sizes(pairs) -> None:
    for pair in pairs:
        with Image.open(pair.source) as s, Image.open(pair.target) as t:
            if s.size != t.size:
                raise InputError(
                    f"pair '{pair.name}': {pair.source} is {s.size[0]}x{s.size[1]} but {pair.target} is "
                    f"{t.size[0]}x{t.size[1]}; a source and its target must be the same size (data.root)"
                )


def seed_pairs(cfg, run_dir: Path, eye_region: str = "lid", root: str | Path | None = None) -> list:
    """The seed pairs of `root` (default `data.root`; the first `data.num_pairs`), each with a mask (the face parser
    makes the missing ones, in run_dir/masks)."""
    root = cfg.data.root if root is None else root
    try:
        scan = scan_pairs(root)
    except DatasetError as err:
        raise ConfigError(f"config key 'data.root': {err}") from None
    for line in scan.skipped + scan.warnings:
        log.warning("%s", line)
    pairs = scan.pairs[: cfg.data.num_pairs] if cfg.data.num_pairs > 0 else scan.pairs
    _check_sizes(pairs)
    _fill_missing_masks(pairs, run_dir / "masks", eye_region)
    return pairs


def build_data(
    cfg, run_dir: Path, eye_region: str = "lid", root: str | Path | None = None
) -> tuple[PairedDataset, list]:
    pairs = seed_pairs(cfg, run_dir, eye_region, root)
    log.info("seed pairs (%d): %s", len(pairs), ", ".join(p.name for p in pairs))
    affine = config_to_dict(cfg.data.affine)
    try:
        dataset = PairedDataset(pairs, size=cfg.train.resolution, hflip=cfg.data.hflip, cache=True, affine=affine)
    except ValueError as err:
        raise ConfigError(f"config key 'data.affine': {err}") from None
    return dataset, pairs


def find_holdout_face(cfg, train_names: set[str]) -> Path | None:
    """`data.holdout_face`, else the first face in data/samples/faces/, else the first unused source."""
    if cfg.data.holdout_face:
        path = Path(cfg.data.holdout_face)
        if not path.is_file():
            raise ConfigError(f"config key 'data.holdout_face': file not found: {path}")
        return path
    if SAMPLE_FACES.is_dir():
        faces = list_images(SAMPLE_FACES)
        if faces:
            return faces[0]
    for path in list_images(Path(cfg.data.root) / "source"):
        if path.stem not in train_names:
            return path
    return None


def load_holdout(path: Path | None, size: int, eye_region: str = "lid") -> tuple[torch.Tensor, torch.Tensor] | None:
    """(1, 3, S, S) face in [-1, 1] and (1, S, S) makeup labels (all skin when no face is parsed)."""
    if path is None:
        return None
    try:
        rgb = resize_rgb(read_rgb(path), size)
    except ImageReadError as err:
        log.warning("held-out face skipped: %s", err)
        return None
    try:
        makeup = _parse_makeup(rgb, eye_region)
    except Exception as err:  # the parser is optional for samples: never stop a run over it
        log.warning("face parser unavailable for the held-out face (%s): using an all-skin mask", err)
        makeup = None
    mask = np.full((size, size), SKIN, np.uint8) if makeup is None else makeup
    return from_uint8(rgb)[None], torch.from_numpy(mask).long()[None]


# --------------------------------------------------------------------------------------------
# Model, optimizer, losses
# --------------------------------------------------------------------------------------------
def build_model(cfg, device: torch.device) -> tuple[DDA, bool]:
    precision = mixed_precision(cfg)
    use_fp16 = device.type == "cuda" and precision == "fp16"
    dda = build_dda(cfg, device=device, dtype=torch.float16 if use_fp16 else torch.float32)
    return prepare_training(dda, cfg.model.gradient_checkpointing), use_fp16


def mixed_precision(cfg) -> str:
    """`model.mixed_precision` as fp16 or no. YAML reads a bare `no` (as typed on the command line) as
    false, which the string-typed key then holds as "False": that is `no` too."""
    value = str(cfg.model.mixed_precision).strip().lower()
    value = {"false": "no", "none": "no", "fp32": "no", "off": "no"}.get(value, value)
    if value not in MIXED_PRECISION:
        raise ConfigError(
            f"config key 'model.mixed_precision' must be {' or '.join(MIXED_PRECISION)}, "
            f"not {cfg.model.mixed_precision!r}"
        )
    return value


def parameter_counts(dda: DDA) -> dict[str, int]:
    groups = dda.trainable_parameters()
    counts = {name: sum(p.numel() for p in params) for name, params in groups.items()}
    counts["total_trainable"] = count_parameters(dda, trainable_only=True)
    counts["frozen"] = count_parameters(dda) - counts["total_trainable"]
    return counts


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train_epoch(dda, loader, loss_fn, optimizer, scaler, cfg, use_fp16, wandb, state, progress) -> dict:
    """One pass over the seed pairs; `state` carries the step count, the latent cache and the non-finite counter."""
    totals: dict[str, float] = {}
    nonfinite = state.setdefault("nonfinite", NonFiniteSteps(dda, use_fp16, cfg.train.lr))
    for batch in loader:
        result = train_step(
            dda, batch, loss_fn, optimizer, scaler, cfg.train.grad_clip, use_fp16, state.get("latent_cache")
        )
        state["global_step"] += 1
        nonfinite.update(result, state["global_step"], log)  # 10 in a row stop the run
        values = result.terms
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
        module_values = {"rdm_alpha": float(dda.rdm.alpha.detach()), "grad_norm": result.grad_norm}
        module_values.update({f"fgmm_{k}": v for k, v in dda.fgmm.weights().items()})
        if use_fp16:
            module_values["loss_scale"] = result.loss_scale
        wandb.log({**{f"loss/{k}": v for k, v in values.items()}, **module_values}, step=state["global_step"])
        progress.update(1)
        progress.set_postfix(loss=f"{values['total']:.4f}", alpha=f"{module_values['rdm_alpha']:.3f}")
    return {k: v / max(len(loader), 1) for k, v in totals.items()}


@torch.no_grad()
def save_samples(dda: DDA, dataset: PairedDataset, holdout, cfg, epoch: int, run_dir: Path, wandb) -> Path:
    """Per seed pair: source | DDA output | target; then the held-out face: face | DDA output."""
    dda.eval()
    generator = torch.Generator().manual_seed(cfg.train.sample_seed)
    rows = []
    settings = dict(
        strength=cfg.diffusion.strength, num_steps=cfg.diffusion.num_steps, scheduler=cfg.diffusion.scheduler
    )
    for index in range(len(dataset)):
        source, target, mask = _unflipped(dataset, index)
        output = dda.img2img(source[None], mask[None], generator=generator, **settings)
        rows.append([to_uint8(source), to_uint8(output[0]), to_uint8(target)])
    if holdout is not None:
        face, mask = holdout
        output = dda.img2img(face, mask, generator=generator, **settings)
        rows.append([to_uint8(face[0]), to_uint8(output[0])])
    dda.train()
    path = atomic_save_image(
        make_grid(rows, labels=["source", "DDA output", "target"]), run_dir / f"sample_epoch_{epoch}.png"
    )
    image = wandb.image(path, caption=f"epoch {epoch}")
    if image is not None:
        wandb.log({"samples": image}, step=None)
    return path


def _unflipped(dataset: PairedDataset, index: int):
    """(3, S, S) source and target in [-1, 1] and (S, S) labels, without the random flip (fixed samples)."""
    source, target, mask = dataset.load_arrays(index)
    mask = np.full(source.shape[:2], SKIN, np.uint8) if mask is None else mask
    return from_uint8(source), from_uint8(target), torch.from_numpy(mask.astype(np.int64))


def checkpoint_state(dda, optimizer, scaler, cfg, epoch, state, last_terms) -> dict:
    return {
        "dda": dda.state(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "global_step": state["global_step"],
        "rng": get_rng_state(),
        "config": config_to_dict(cfg),
        "last_loss": last_terms,
        "seconds": state["seconds"],
    }


def parse_args(argv: list[str] | None = None) -> tuple:
    """`--resume CKPT` without `--config` continues with the checkpoint's config (overrides on top), as stage 4."""
    args, cfg, ckpt = parse_resumable_args(__doc__, DEFAULT_CONFIG, argv)
    if ckpt is not None and ("dda" not in ckpt or "optimizer" not in ckpt):
        raise CheckpointError(f"{args.resume} is not a dda_training.py checkpoint (expected dda_checkpoint_epoch_N.pt)")
    given = any(o.split("=", 1)[0].strip() == "amplifier" for o in args.overrides)
    if ckpt is not None and "amplifier" not in ckpt["config"] and not given:
        cfg.amplifier = "dda"  # a run started before the key existed trained the DDA alone: it goes on so
    return args, cfg, ckpt


def resume(ckpt: dict, path: str, dda, optimizer, scaler, state) -> int:
    dda.load_state(ckpt["dda"])
    optimizer.load_state_dict(ckpt["optimizer"])
    _pad_fgmm_moments(optimizer, dda.fgmm.region_weights)
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state["global_step"], state["seconds"] = ckpt["global_step"], ckpt.get("seconds", 0.0)
    log.info("resumed from %s at epoch %d (step %d)", path, ckpt["epoch"], ckpt["global_step"])
    return int(ckpt["epoch"])


def _pad_fgmm_moments(optimizer, weights: torch.nn.Parameter) -> None:
    """A checkpoint saved before FGMM had its cheeks weight holds 3-entry moments: the cheeks take the skin's."""
    moments = optimizer.state.get(weights, {})
    for key, value in moments.items():
        if torch.is_tensor(value) and value.dim() == 1 and value.numel() == weights.numel() - 1:
            moments[key] = torch.cat([value, value[-1:]])


def write_summary(run_dir: Path, cfg, run: dict, calibration: dict | None) -> dict:
    dda, state = run["dda"], run["state"]
    summary = {
        "stage": "dda_training",
        "amplifier": str(cfg.amplifier),
        "pretrained": str(cfg.model.pretrained),
        "data_root": str(cfg.data.root),
        "num_pairs": len(run["pairs"]),
        "pairs": [p.name for p in run["pairs"]],
        "holdout_face": str(run["holdout_path"]) if run["holdout_path"] else None,
        "resolution": int(cfg.train.resolution),
        "epochs": int(cfg.train.epochs),
        "epochs_this_run": run["epochs_run"],
        "steps": state["global_step"],
        "final_loss": run["last_terms"],
        "rdm_alpha": float(dda.rdm.alpha.detach()),
        "fgmm_weights": dda.fgmm.weights(),
        "fgmm_colour": run.get("colour"),
        "region_conditioning": dda.region_conditioning is not None,
        "calibration": calibration,
        "draft": run.get("draft"),
        "trainable_params": run["counts"],
        "lora": {"rank": dda.lora_rank, "alpha": dda.lora_alpha},
        "device": str(dda.device),
        "mixed_precision": "fp16" if run["use_fp16"] else "no",
        "seconds": round(state["seconds"], 2),
        "seconds_per_step": round(state["seconds"] / max(state["steps_timed"], 1), 4) if state["steps_timed"] else None,
        "nonfinite_steps": state["nonfinite"].total,
        "vae_upcast": dda.upcast_vae,
        "outputs": {"final": "dda_final.pt", "lora": "pytorch_lora_weights.safetensors", "modules": "dda_modules.json"},
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict:
    args, cfg, resume_ckpt = parse_args(argv)
    require_dir(cfg.data.root, "dataset folder", key="data.root")  # before any output is made
    amplifier = check_amplifier(cfg)
    draft_settings(cfg)  # a wrong draft key stops here, before any output
    run_dir = prepare_run_dir(cfg)
    fitted = fit_draft(cfg, run_dir) if amplifier.startswith("draft") else None
    if amplifier == "draft":
        return finish_draft_only(cfg, run_dir, fitted)
    data_root = write_draft_pairs(fitted, run_dir / "draft_pairs") if fitted else None
    run = train(cfg, run_dir, resume_ckpt, args.resume, data_root)
    run["colour"] = fit_colour(cfg, run["dda"], run["dataset"], range(len(run["pairs"])))
    calibration = calibrate(cfg, run, run_dir) if cfg.calibrate > 0 else None
    dda, state = run["dda"], run["state"]
    final = checkpoint_state(dda, run["optimizer"], run["scaler"], cfg, cfg.train.epochs, state, run["last_terms"])
    final = {k: v for k, v in final.items() if k not in ("optimizer", "scaler", "rng")}
    if fitted:
        final.update(amplifier=amplifier, draft=fitted["draft"].state(), eye_region=fitted["eye_region"])
    save_checkpoint(final, run_dir / "dda_final.pt")
    save_lora(dda, run_dir)
    run["draft"] = draft_record(fitted) if fitted else None
    summary = write_summary(run_dir, cfg, run, calibration)
    log.info("done in %s: %s", format_seconds(state["seconds"]), run_dir / "dda_final.pt")
    return summary


def train(cfg, run_dir: Path, resume_ckpt: dict | None = None, resume_path: str | None = None, data_root=None) -> dict:
    """Train the DDA of `cfg` in `run_dir` (checkpoints and samples on the way); returns what the end needs.
    `data_root`: the pairs it trains on, when not `data.root`'s (the seeds' leave-one-out drafts, draft+dda)."""
    seed_everything(cfg.seed)
    device = get_device(cfg.train.device)
    eye_region = seed_eye_region(cfg.data.root)  # the seeds' mask convention: parsed masks and stage 3 follow it
    dataset, pairs = build_data(cfg, run_dir, eye_region, data_root)
    check_calibrate(cfg, len(pairs))
    colour_regions(cfg)
    holdout_path = find_holdout_face(cfg, {p.name for p in pairs})
    holdout = load_holdout(holdout_path, cfg.train.resolution, eye_region)
    dda, use_fp16 = build_model(cfg, device)
    dda.eye_region = eye_region  # stage 3 parses new faces with the seeds' mask convention
    if str(cfg.amplifier) == "draft+dda":  # it corrects drafts (the calibration's folds too): RDM gives the draft's
        hold_alpha_at_one(dda)  # own detail back whole (alpha 1)
    counts = parameter_counts(dda)
    regions = f", region conditioning {counts['region_conditioning']}" if "region_conditioning" in counts else ""
    log.info(
        "trainable: LoRA %d, RDM alpha %d, FGMM %d%s = %d; frozen %d",
        *(counts[k] for k in ("lora", "rdm_alpha", "fgmm")),
        regions,
        counts["total_trainable"],
        counts["frozen"],
    )
    optimizer = build_optimizer(dda, cfg.train.lr, cfg.train.scalar_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_fp16)
    loss_fn = DDALoss.from_config(cfg).to(device)
    state = {"global_step": 0, "seconds": 0.0, "steps_timed": 0}
    state["nonfinite"] = NonFiniteSteps(dda, use_fp16, cfg.train.lr)
    # The seed pairs repeat every epoch: encode each (and its flip) once. With data.affine each image is new.
    state["latent_cache"] = None if _affine_on(cfg) else LatentCache()
    start_epoch = resume(resume_ckpt, resume_path, dda, optimizer, scaler, state) if resume_ckpt else 0
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0, drop_last=False)
    wandb = WandbLogger(cfg, run_dir, name="dda")
    last_terms: dict = {}
    total_steps = (cfg.train.epochs - start_epoch) * len(loader)
    log.info(
        "training %d epoch(s) x %d step(s) on %s, resolution %d",
        cfg.train.epochs - start_epoch,
        len(loader),
        device,
        cfg.train.resolution,
    )
    dda.train()
    with tqdm(total=total_steps, desc="dda", unit="step", dynamic_ncols=True) as progress:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            started = time.perf_counter()
            last_terms = train_epoch(dda, loader, loss_fn, optimizer, scaler, cfg, use_fp16, wandb, state, progress)
            state["seconds"] += time.perf_counter() - started
            state["steps_timed"] += len(loader)
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                ckpt = checkpoint_state(dda, optimizer, scaler, cfg, epoch, state, last_terms)
                save_checkpoint(ckpt, run_dir / f"dda_checkpoint_epoch_{epoch}.pt")
            if epoch % cfg.train.sample_every == 0 or epoch == cfg.train.epochs:
                save_samples(dda, dataset, holdout, cfg, epoch, run_dir, wandb)
            log.info(
                "epoch %d: %s | alpha %.4f | fgmm %s",
                epoch,
                _fmt(last_terms),
                float(dda.rdm.alpha.detach()),
                _fmt(dda.fgmm.weights()),
            )
    wandb.finish()
    cache = state["latent_cache"]
    if cache is not None:
        log.info("latent cache: %d image(s) encoded, %d reused", cache.encoded, cache.reused)
    if state["nonfinite"].total:
        log.warning("%d step(s) had a non-finite loss or gradient and were skipped", state["nonfinite"].total)
    dda.eval()
    return {"dda": dda, "dataset": dataset, "pairs": pairs, "optimizer": optimizer, "scaler": scaler,
            "state": state, "last_terms": last_terms, "counts": counts, "holdout_path": holdout_path,
            "epochs_run": cfg.train.epochs - start_epoch, "use_fp16": use_fp16}  # fmt: skip


def hold_alpha_at_one(dda: DDA) -> None:
    """RDM's alpha fixed at 1 (clamped there after every step): with amplifier=draft+dda the DDA's source is the draft,
    whose liner and hue the VAE cannot hold, so all of what the base run loses of it is given back."""
    with torch.no_grad():
        dda.rdm.alpha.fill_(1.0)
    dda.ALPHA_RANGE = (1.0, 1.0)


# --------------------------------------------------------------------------------------------
# The makeup draft (amplifier: draft | draft+dda)
# --------------------------------------------------------------------------------------------
def check_amplifier(cfg) -> str:
    amplifier = str(cfg.amplifier)
    if amplifier not in AMPLIFIERS:
        raise ConfigError(f"config key 'amplifier' must be one of {', '.join(AMPLIFIERS)}, not {cfg.amplifier!r}")
    if amplifier == "draft" and cfg.calibrate > 0:
        raise ConfigError("config key 'calibrate' calibrates the DDA's FGMM weights, and amplifier=draft trains no DDA")
    return amplifier


def draft_settings(cfg) -> DraftSettings:
    try:
        return DraftSettings.from_config(config_to_dict(cfg.draft))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key 'draft': {err}") from None


def fit_draft(cfg, run_dir: Path) -> dict:
    """The draft from every seed pair, and each seed drafted from the others (its real errors: the DDA's training
    sources with draft+dda, and the draft's own leave-one-out score); `draft_samples.png` shows them."""
    started = time.perf_counter()
    settings = draft_settings(cfg)
    eye_region = seed_eye_region(cfg.data.root)
    pairs = seed_pairs(cfg, run_dir, eye_region)
    with FaceParser(eye_region=eye_region) as parser:
        seeds = seed_faces(pairs, settings.size, parser)
    draft = MakeupDraft.fit(seeds, settings)
    drafted = leave_one_out(seeds, settings)
    scores = {
        seed.name: {"psnr_db": round(psnr(drafted[seed.name][0], seed.target), 3),
                    "identity_psnr_db": round(psnr(seed.source, seed.target), 3),
                    "folded_share": round(drafted[seed.name][1], 4)}
        for seed in seeds
    }  # fmt: skip
    rows = [[seed.source, drafted[seed.name][0], seed.target] for seed in seeds]
    atomic_save_image(
        make_grid(rows, labels=["source", "draft from the other seeds", "target"]), run_dir / "draft_samples.png"
    )
    mean = {k: round(float(np.mean([v[k] for v in scores.values()])), 3) for k in ("psnr_db", "identity_psnr_db")}
    log.info(
        "makeup draft from %d seed pair(s) (%s, %.1f s): each seed drafted from the others %.2f dB against its target "
        "(the plain face %.2f dB)", len(seeds), settings.space, time.perf_counter() - started, mean["psnr_db"],
        mean["identity_psnr_db"],
    )  # fmt: skip
    return {"draft": draft, "seeds": seeds, "leave_one_out": drafted, "scores": scores, "mean": mean,
            "eye_region": eye_region, "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def write_draft_pairs(fitted: dict, folder: Path) -> Path:
    """folder/{source,target,mask}: each seed's leave-one-out draft as the source, its own target and mask: what the
    DDA trains on with draft+dda (it learns the draft's real errors)."""
    for seed in fitted["seeds"]:
        atomic_save_image(fitted["leave_one_out"][seed.name][0], folder / "source" / f"{seed.name}.png")
        atomic_save_image(seed.target, folder / "target" / f"{seed.name}.png")
        atomic_save_image(seed.mask, folder / "mask" / f"{seed.name}.png")
    atomic_write_text(folder / "summary.json", json.dumps({"eye_region": fitted["eye_region"]}))
    return folder


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def draft_record(fitted: dict) -> dict:
    """The draft's part of summary.json."""
    draft = fitted["draft"]
    return {"settings": asdict(draft.settings), "size": draft.size, "seeds": draft.seeds,
            "leave_one_out": fitted["scores"], "leave_one_out_mean": fitted["mean"], "seconds": fitted["seconds"]}  # fmt: skip


def finish_draft_only(cfg, run_dir: Path, fitted: dict) -> dict:
    """amplifier=draft: the checkpoint holds the draft and no DDA; nothing trains."""
    final = {"amplifier": "draft", "draft": fitted["draft"].state(), "eye_region": fitted["eye_region"],
             "config": config_to_dict(cfg), "seconds": fitted["seconds"]}  # fmt: skip
    save_checkpoint(final, run_dir / "dda_final.pt")
    summary = {
        "stage": "dda_training",
        "amplifier": "draft",
        "data_root": str(cfg.data.root),
        "num_pairs": len(fitted["seeds"]),
        "pairs": [seed.name for seed in fitted["seeds"]],
        "eye_region": fitted["eye_region"],
        "draft": draft_record(fitted),
        "seconds": fitted["seconds"],
        "outputs": {"final": "dda_final.pt", "samples": "draft_samples.png"},
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    log.info("done in %s: %s (the makeup draft; no DDA trained)", format_seconds(fitted["seconds"]),
             run_dir / "dda_final.pt")  # fmt: skip
    return summary


# --------------------------------------------------------------------------------------------
# Calibrated transfer (calibrate=K): leave-one-out on the seed pairs
# --------------------------------------------------------------------------------------------
CALIBRATED_WEIGHT_MAX = 4.0  # a calibrated FGMM weight above this would say the fold models learned ~nothing


def check_calibrate(cfg, num_pairs: int) -> None:
    folds = int(cfg.calibrate)
    if folds < 0:
        raise ConfigError(f"config key 'calibrate' must be 0 (off) or a number of folds, not {folds}")
    if folds and num_pairs < folds + 1:
        raise ConfigError(
            f"config key 'calibrate': {folds} fold(s) need at least {folds + 1} seed pairs, but there are "
            f"{num_pairs} (data.root, data.num_pairs): lower calibrate or add pairs"
        )


def calibrate(cfg, run: dict, run_dir: Path) -> dict:
    """Fold k trains a DDA on every seed pair but pair k (same config and epochs), makes pair k up, and fits
    per region the gain that brings its change closest to the target's (`fit_region_gains`). The gains,
    averaged over the folds, scale the FGMM weights of the full DDA: what dda_amplify.py uses by default.

    Each fold lives in run_dir/calibration/fold_k and resumes from its own checkpoints.
    """
    started = time.perf_counter()
    dda, pairs, dataset = run["dda"], run["pairs"], run["dataset"]
    folds = []
    for k in range(int(cfg.calibrate)):
        fold_dir = run_dir / "calibration" / f"fold_{k}"
        fold_dda = train_fold(cfg, pairs, k, fold_dir)
        fit_colour(cfg, fold_dda, dataset, [j for j in range(len(pairs)) if j != k])  # on the fold's own pairs
        source, target, mask = _unflipped(dataset, k)
        generator = torch.Generator().manual_seed(cfg.train.sample_seed + k)
        with torch.no_grad():
            output = fold_dda.img2img(source[None], mask[None], generator=generator).float().cpu()
        gains = fit_region_gains(output - source[None], target[None] - source[None], mask[None])
        folds.append({"held_out": pairs[k].name, "fgmm": fold_dda.fgmm.weights(), "gains": gains,
                      "colour": fold_dda.fgmm.colours()})  # fmt: skip
        log.info("calibration fold %d (held out %s): gains %s", k, pairs[k].name, gains)
        del fold_dda
    setup_logging(run_dir / "train.log")  # the folds logged to their own folders
    learned = dda.fgmm.weights()
    mean_gains = {}
    for region in learned:
        values = [f["gains"][region] for f in folds if f["gains"][region] is not None]
        mean_gains[region] = float(np.mean(values)) if values else 1.0  # no evidence: leave the weight as learned
    calibrated = {r: float(np.clip(learned[r] * mean_gains[r], 0.0, CALIBRATED_WEIGHT_MAX)) for r in learned}
    with torch.no_grad():
        dda.fgmm.region_weights.copy_(torch.tensor([calibrated[r] for r in learned]))
    seconds = time.perf_counter() - started
    log.info(
        "calibrated FGMM weights %s (learned %s, mean gains %s) in %s",
        _fmt(calibrated),
        _fmt(learned),
        _fmt(mean_gains),
        format_seconds(seconds),
    )
    return {"folds": folds, "mean_gains": mean_gains, "learned_fgmm": learned, "calibrated_fgmm": calibrated,
            "seconds": round(seconds, 1)}  # fmt: skip


def colour_regions(cfg) -> list[str]:
    """`fgmm.colour`: the regions that get a fitted colour matrix ([] or null: none)."""
    regions = list(cfg.fgmm.get("colour") or [])
    try:
        check_region_names(regions)
    except ValueError as err:
        raise ConfigError(f"config key 'fgmm.colour': {err}") from None
    return regions


def fit_colour(cfg, dda: DDA, dataset: PairedDataset, indices) -> dict | None:
    """FGMM's colour matrices (`fgmm.colour`), fitted on the DDA's own makeup of the pairs `indices` (unflipped,
    its current FGMM weights deciding where it paints; `fit_region_colour`); regions the fit rejects, and the rest,
    keep the identity. Returns the matrices set, or None when `fgmm.colour` is off.

    Starts from the identity, so a resumed or repeated fit gives the same matrices. The DDA's change and the target's
    are gathered over all the pairs first: one least squares per region.
    """
    regions = colour_regions(cfg)
    if not regions:
        return None
    started = time.perf_counter()
    dda.fgmm.set_colours({})
    changes, wanted, masks = [], [], []
    for index in indices:
        source, target, mask = _unflipped(dataset, index)
        generator = torch.Generator().manual_seed(cfg.train.sample_seed + index)
        with torch.no_grad():
            styled = dda.makeup_signal(source[None], mask[None], generator=generator).float().cpu()
        changes.append(styled - source[None])
        wanted.append(target[None] - source[None])
        masks.append(mask[None])
    fits = fit_region_colour(torch.cat(changes), torch.cat(wanted), torch.cat(masks), regions)
    dda.fgmm.set_colours({name: matrix for name, matrix in fits.items() if matrix is not None})
    kept = ", ".join(name for name, matrix in fits.items() if matrix is not None) or "none"
    log.info(
        "FGMM colour matrices fitted on %d pair(s) (%s) in %.1f s", len(indices), kept, time.perf_counter() - started
    )
    return dda.fgmm.colours()


def train_fold(cfg, pairs: list, held_out: int, fold_dir: Path) -> DDA:
    """The DDA of one fold: trained on every pair but `held_out`, or loaded when the fold finished earlier."""
    if (fold_dir / "dda_final.pt").is_file():
        return load_dda(fold_dir / "dda_final.pt", device=get_device(cfg.train.device))
    data = fold_dir / "pairs"
    for pair in pairs[:held_out] + pairs[held_out + 1 :]:
        for kind, path in (("source", pair.source), ("target", pair.target), ("mask", pair.mask)):
            link = data / kind / f"{pair.name}{Path(path).suffix}" if path is not None else None
            if link is not None and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(path).resolve())
    atomic_write_text(data / "summary.json", json.dumps({"eye_region": seed_eye_region(cfg.data.root)}))
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.data.root, fold_cfg.output_dir, fold_cfg.calibrate = str(data), str(fold_dir), 0
    fold_cfg.data.num_pairs, fold_cfg.data.holdout_face, fold_cfg.wandb.mode = (
        0,
        str(pairs[held_out].source),
        "disabled",
    )
    checkpoints = sorted(fold_dir.glob("dda_checkpoint_epoch_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    resume_ckpt = load_checkpoint(checkpoints[-1]) if checkpoints else None
    prepare_run_dir(fold_cfg)
    log.info("calibration: fold without %s (%d pairs) -> %s", pairs[held_out].name, len(pairs) - 1, fold_dir)
    run = train(fold_cfg, fold_dir, resume_ckpt, str(checkpoints[-1]) if checkpoints else None)
    final = checkpoint_state(run["dda"], run["optimizer"], run["scaler"], fold_cfg, cfg.train.epochs, run["state"], {})
    save_checkpoint(
        {k: v for k, v in final.items() if k not in ("optimizer", "scaler", "rng")}, fold_dir / "dda_final.pt"
    )
    write_summary(fold_dir, fold_cfg, run, None)
    return run["dda"]


def _affine_on(cfg) -> bool:
    affine = cfg.data.affine
    return bool(affine.rotate_deg or affine.scale or affine.shift) and affine.probability > 0


def _fmt(values: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in values.items())


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
