"""Stage 3: amplify a folder of plain faces into makeup pairs with the trained DDA.

    python dda_amplify.py                                         # configs/dda_amplify.yaml
    python dda_amplify.py checkpoint=dda_model/dda_final.pt input_dir=/data/ffhq output_dir=amplified/ num_images=20000
    python dda_amplify.py styles='{lips: dda_red/dda_final.pt}'   # lips from another style, the rest from `checkpoint`
    accelerate launch --multi_gpu --num_processes 4 dda_amplify.py input_dir=/data/ffhq batch_size=16   # 4 GPUs
    torchrun --nproc_per_node 2 dda_amplify.py ...                # several CPU processes (Accelerate reads torchrun's env)
    python dda_amplify.py output_dir=amplified/                   # again: resumes, skipping finished pairs

For each input photo: the largest face is found, cropped and aligned (data/face_align.py), its makeup
regions are parsed on the crop (data/face_parsing.py), the DDA paints the makeup in with img2img at
a low strength (the official release: 0.3, 10 DDIM steps), FGMM weighting each region, and the pair
is written in the paired format stage 4 reads unchanged (data/paired.py):

    OUTPUT_DIR/source/NAME.png   the aligned plain face
    OUTPUT_DIR/target/NAME.png   the same face with makeup (identical to source outside the makeup regions)
    OUTPUT_DIR/mask/NAME.png     uint8 labels 0 background, 1 eyes, 2 lips, 3 skin
    OUTPUT_DIR/manifest.jsonl    one line per pair: input, name, seed, settings, status ok|skipped, reason, seconds
    OUTPUT_DIR/contact_sheet.png the first pairs: source | target | difference x4 | mask overlay
    OUTPUT_DIR/summary.json      inputs, planned_pairs, pairs, made, resumed, skipped, skipped_by_reason,
                                 remaining, seconds, seconds_per_image, images_per_second, settings
    OUTPUT_DIR/config.yaml, amplify.log

Skip reasons: not_an_image, corrupt, no_face (detector), no_face_parse (landmarks on the crop),
no_makeup_region, error (anything else the face tools raised; logged). `max_new_pairs` stops a run
early (time-limited jobs); running the same command again goes on where it stopped.

Determinism: every pair has its own seed (from `seed`, the input's file name and the variant) and its
own noise generator, and the batches are cut from one global, sorted plan (process k takes batches
k, k+N, ...; a resumed batch is generated whole again and only its missing pairs written), so with
the same config a pair's bytes do not depend on the process count or on being resumed. (Another
`batch_size` gives the same noise but may round differently in batched kernels.) A rerun skips every
pair whose files exist and whose manifest line says ok or skipped, and refuses an output folder made
with other settings; files are written atomically, so a killed run leaves no half-written image.

The model does not wait for the CPU work around it: a worker thread prepares the next batch's faces
(read, detect, align, parse) while the model makes the current one, and a writer thread writes the
finished pairs (PNGs, then each pair's manifest line, in plan order) meanwhile. The bytes and the
manifest are those of doing it all in turn.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from common import (
    REPO_ROOT,
    WandbLogger,
    atomic_save_image,
    atomic_write_text,
    from_uint8,
    log,
    make_grid,
    parse_stage_args,
    prepare_run_dir,
    require_dir,
    run_cli,
    setup_logging,
    to_uint8,
)
from data.amplify_manifest import (
    MANIFEST,
    Job,
    ShardWriter,
    check_settings,
    is_done,
    job_key,
    load_manifest,
    merge_manifest,
    my_batches,
    pair_files,
    plan_jobs,
)
from data.face_crops import PreparedFace, SkipInput, build_face_tools, prepare_face
from data.face_parsing import EYE_REGIONS
from data.io import read_labels, read_rgb
from errors import ConfigError
from models.dda import SCHEDULERS
from models.dda_io import AMPLIFIERS, load_amplifier
from models.fgmm import REGIONS, WEIGHTS  # FGMM regions (labels 1, 2, 3 in the mask: data/paired.py) + cheeks

DEFAULT_CONFIG = REPO_ROOT / "configs" / "dda_amplify.yaml"


# --------------------------------------------------------------------------------------------
# Generation: one DDA call per style, regions combined
# --------------------------------------------------------------------------------------------
def configured_weights(cfg: DictConfig) -> dict[str, float | None]:
    """`region_weights` as set: a number overrides the checkpoint's learned FGMM weight, null keeps it (cheeks:
    null, or left out of an older config, follow a skin override)."""
    weights = {r: None if cfg.region_weights[r] is None else float(cfg.region_weights[r]) for r in REGIONS}
    if cfg.region_weights.get("cheeks") is not None:  # recorded only when set: earlier runs' records still match
        weights["cheeks"] = float(cfg.region_weights.cheeks)
    return weights


def style_groups(cfg: DictConfig) -> list[tuple[str, dict[str, float]]]:
    """(checkpoint, FGMM overrides) per DDA style. Without `styles`, one group: `checkpoint`, all regions.

    With `styles` ({region: checkpoint}), each style is asked only for its own regions (the others
    overridden to 0, which the DDA leaves exactly as the source), so summing the styles' changes takes
    each region from its style: makeup combination through FGMM as in the paper.
    """
    weights = configured_weights(cfg)
    owner = {r: str(cfg.checkpoint) for r in REGIONS}
    if cfg.styles:
        owner.update({str(r): str(ckpt) for r, ckpt in cfg.styles.items()})
    owner["cheeks"] = owner["skin"]  # the cheeks are part of the skin
    groups = []
    for checkpoint in dict.fromkeys(owner.values()):
        overrides = {r: 0.0 for r in REGIONS if owner[r] != checkpoint}  # skin 0: its cheeks too
        overrides.update({r: w for r, w in weights.items() if owner[r] == checkpoint and w is not None})
        groups.append((checkpoint, overrides))
    return groups


def style_record(cfg: DictConfig) -> str | dict[str, str]:
    groups = style_groups(cfg)
    if len(groups) == 1:
        return groups[0][0]
    owner = {r: str(cfg.checkpoint) for r in REGIONS}
    owner.update({str(r): str(ckpt) for r, ckpt in cfg.styles.items()})
    return owner


def generate(
    models: dict,
    cfg: DictConfig,
    source: torch.Tensor,
    mask: torch.Tensor,
    seeds: Sequence[int],
    drafts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, 3, R, R) in [-1, 1] -> makeup version, same shape. Each sample's noise comes from its own seed.

    Per style, its amplifier (`models.dda_io.Amplifier`): the DDA from the plain face (dda), the drafted face as it
    is (draft, `drafts[checkpoint]`, made by `draft_faces`), or the DDA from the drafted face (draft+dda: RDM's alpha
    is 1, so the DDA's change in pixel space is added to the draft, whose liner and hue the VAE could not carry)."""
    target = source.clone()
    for checkpoint, overrides in style_groups(cfg):
        if overrides and all(overrides.get(r) == 0 for r in REGIONS):
            continue  # this style owns no region with any weight
        amplifier = models[checkpoint]
        start = drafts[checkpoint] if amplifier.draft is not None else source
        if amplifier.dda is not None:
            generators = [torch.Generator(device=source.device).manual_seed(int(s)) for s in seeds]
            start = amplifier.dda.img2img(start, mask, region_weights=overrides, generator=generators,
                                          **sampling(cfg))  # fmt: skip
        target = target + (start.float() - source)  # each style changes only its own regions
    return target.clamp(-1, 1)


def sampling(cfg: DictConfig) -> dict:
    return dict(strength=float(cfg.strength), num_steps=int(cfg.num_steps), scheduler=str(cfg.scheduler),
                guidance_scale=float(cfg.guidance_scale))  # fmt: skip


def keep_source_outside_makeup(
    source: np.ndarray, target: np.ndarray, mask: np.ndarray, weights: dict[str, float | None]
) -> np.ndarray:
    """Background and regions set to weight 0 copied from the source, bit for bit.

    The DDA already does this in fp32; in fp16 the VAE round trip may not, and stage 4's pixel
    losses must see identical pixels there (the official release copies the source back as well).
    """
    keep = mask == 0
    cheeks = weights.get("cheeks")
    for label, region in enumerate(REGIONS, start=1):
        # the skin stays the source only if the cheeks (on it) get nothing either
        if weights[region] == 0 and (region != "skin" or cheeks in (None, 0)):
            keep |= mask == label
    out = target.copy()
    out[keep] = source[keep]
    return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def run_settings(cfg: DictConfig, resolution: int) -> dict:
    sampled = cfg.amplifier != "draft"  # the draft alone samples nothing: its sampling settings are null
    settings = {
        "amplifier": str(cfg.amplifier),
        "strength": float(cfg.strength) if sampled else None,
        "num_steps": int(cfg.num_steps) if sampled else None,
        "scheduler": str(cfg.scheduler) if sampled else None,
        "guidance_scale": float(cfg.guidance_scale),
        "region_weights": configured_weights(cfg),  # null: the checkpoint's learned FGMM weight
        "style": style_record(cfg),
        "resolution": int(resolution),
        "eye_region": str(cfg.face.eye_region),
    }
    if not cfg.get("fgmm_colour", True):  # recorded only when off: earlier runs' records still match
        settings["fgmm_colour"] = False
    return settings


def write_pair(out_dir: Path, name: str, face: PreparedFace, target: np.ndarray) -> None:
    source_path, target_path, mask_path = pair_files(out_dir, name)
    atomic_save_image(face.source, source_path)
    atomic_save_image(face.mask, mask_path)
    atomic_save_image(target, target_path)  # last: a pair counts as written once its target exists


@dataclass
class AmplifyContext:
    """What every batch of one amplification run shares."""

    cfg: DictConfig
    out_dir: Path
    device: torch.device
    resolution: int  # the square crop the DDA works at
    models: dict  # DDA checkpoint path -> loaded DDA (one per style)
    aligner: Any  # data.face_align.FaceAligner
    parser: Any  # data.face_parsing.FaceParser
    settings: dict  # run_settings(): recorded with every pair and checked on resume
    pending: set[int]  # Job.index of the pairs this process still has to write
    groups: list  # style_groups(cfg): (checkpoint, FGMM overrides) per style


def prepare_batch(batch: list[Job], ctx: AmplifyContext) -> dict[str, PreparedFace | SkipInput]:
    """Each distinct input of the batch found, aligned and parsed (or why not): the face tools' share of a
    batch, run on the prefetch thread (the only thread that uses the aligner and the parser)."""
    prepared: dict[str, PreparedFace | SkipInput] = {}
    for job in batch:
        if job.input_name in prepared:
            continue
        try:
            prepared[job.input_name] = draft_faces(
                prepare_face(job.input, ctx.aligner, ctx.parser, ctx.resolution), job.input, ctx
            )
        except SkipInput as skip:
            prepared[job.input_name] = skip
        except Exception as err:  # one odd photo must not end a 20,000-image run; logged and recorded
            log.warning("%s: face detection failed: %r", job.input, err)
            prepared[job.input_name] = SkipInput("error", f"{job.input}: {type(err).__name__}: {err}")
    return prepared


def draft_faces(face: PreparedFace, path: Path, ctx: AmplifyContext) -> PreparedFace:
    """The face drafted by each style that has a makeup draft (on the prefetch thread, beside the model); a face
    whose warp folds over more than `draft.max_folded` of its makeup regions is skipped (warp_folded)."""
    limit = float(ctx.cfg.draft.max_folded)
    for checkpoint, overrides in ctx.groups:
        draft = ctx.models[checkpoint].draft
        if draft is None:
            continue
        drafted, info = draft.apply(face.source, face.landmarks, face.mask, overrides)
        if info["folded_share"] > limit:
            raise SkipInput(
                "warp_folded",
                f"{path}: the landmark warp folds over {info['folded_share']:.0%} of the face's makeup regions "
                f"(turned face, hand or glasses; draft.max_folded={limit})",
            )
        face.drafts[checkpoint] = drafted
    return face


PairToWrite = tuple[str, PreparedFace, np.ndarray]  # name, the prepared face (source, mask), the target


def amplify_batch(
    batch: list[Job], prepared: dict[str, PreparedFace | SkipInput], ctx: AmplifyContext
) -> tuple[list[tuple[dict, PairToWrite | None]], float]:
    """Generate one prepared batch; returns each pending pair's manifest record with the pair to write
    (None for a skipped input), and the DDA's seconds.

    The whole batch is generated even when some of its pairs exist already, so that a resumed batch
    holds the same faces as the first attempt; only the pending pairs are returned.
    """
    cfg, device = ctx.cfg, ctx.device
    valid = [job for job in batch if isinstance(prepared[job.input_name], PreparedFace)]
    targets: list[np.ndarray] = []
    dda_seconds = 0.0
    if valid:
        start = time.perf_counter()
        source = torch.stack([from_uint8(prepared[j.input_name].source) for j in valid]).to(device)  # (B, 3, R, R)
        mask = torch.stack([torch.from_numpy(prepared[j.input_name].mask).long() for j in valid]).to(
            device
        )  # (B, R, R)
        drafts = {
            checkpoint: torch.stack([from_uint8(prepared[j.input_name].drafts[checkpoint]) for j in valid]).to(device)
            for checkpoint, _ in ctx.groups
            if ctx.models[checkpoint].draft is not None
        }  # (B, 3, R, R) each
        with torch.no_grad():
            target = generate(ctx.models, cfg, source, mask, [j.seed for j in valid], drafts)
        weights = ctx.settings["region_weights"]
        for job, image in zip(valid, to_uint8(target)):
            face = prepared[job.input_name]
            targets.append(keep_source_outside_makeup(face.source, image, face.mask, weights))
        dda_seconds = time.perf_counter() - start

    outputs = []
    by_job = dict(zip((j.index for j in valid), targets))
    for job in batch:
        if job.index not in ctx.pending:
            continue
        face = prepared[job.input_name]
        record = {"input": job.input_name, "name": job.name, "variant": job.variant, "seed": job.seed}
        record.update(ctx.settings)
        pair = None
        if isinstance(face, PreparedFace):
            pair = (job.name, face, by_job[job.index])
            seconds = face.seconds / sum(j.input_name == job.input_name for j in valid) + dda_seconds / len(valid)
            record.update(status="ok", reason=None, detail=None, box=face.box, matrix=face.matrix)
        else:
            seconds = 0.0
            record.update(status="skipped", reason=face.reason, detail=face.detail)
        record["seconds"] = round(seconds, 4)
        outputs.append((record, pair))
    return outputs, dda_seconds


class PairWriter:
    """Writes pairs and their manifest lines on one background thread, in the order they are given: a pair's
    files first, then its line (so a line always means finished files, as when written in turn). A write
    error stops the writing (nothing after it is written) and comes back to the caller at its next `write`
    or at `close`; at most `backlog` writes wait."""

    def __init__(self, out_dir: Path, shard: ShardWriter, backlog: int = 16):
        self.out_dir, self.shard, self.backlog = out_dir, shard, backlog
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pair-writer")
        self._waiting: deque[Future] = deque()
        self._failed = False

    def write(self, record: dict, pair: PairToWrite | None) -> None:
        self._waiting.append(self._pool.submit(self._write, record, pair))
        while self._waiting and (len(self._waiting) > self.backlog or self._waiting[0].done()):
            self._waiting.popleft().result()  # raises the writer's error here

    def _write(self, record: dict, pair: PairToWrite | None) -> None:
        if self._failed:
            return  # after a failed write nothing more: the plan's order stays whole up to the failure
        try:
            if pair is not None:
                write_pair(self.out_dir, *pair)
            self.shard.write(record)
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            while self._waiting:
                self._waiting.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
            self.shard.close()


def amplify(cfg: DictConfig, accelerator, models: dict, aligner, parser, resolution: int) -> dict:
    """Run the plan's share of this process; the main process merges and summarises. Returns the summary.
    `parser` must use `face.eye_region` (resolved here from the DDA when it is still null)."""
    if cfg.face.eye_region is None:
        resolve_eye_region(cfg, models)
    if cfg.amplifier is None:  # recorded as what ran: the main style's amplifier
        cfg.amplifier = models[str(cfg.checkpoint)].kind
    start = time.perf_counter()
    out_dir = Path(cfg.output_dir)
    jobs = plan_jobs(Path(cfg.input_dir), cfg.num_images, int(cfg.variants_per_face), int(cfg.seed))
    if not jobs:
        raise ConfigError(f"no images in {cfg.input_dir} (config key 'input_dir')")
    resolve_sampling(cfg, models[str(cfg.checkpoint)].dda)
    settings = run_settings(cfg, resolution)
    records = load_manifest(out_dir)
    check_settings(records, jobs, settings, out_dir)
    accelerator.wait_for_everyone()  # everyone has read the old shards before any process appends

    rank, world = accelerator.process_index, accelerator.num_processes
    batches = my_batches(jobs, int(cfg.batch_size), rank, world)
    pending = {
        j.index for b in batches for j in b if not is_done(records.get(job_key(j.input_name, j.variant)), out_dir)
    }
    limit = int(cfg.max_new_pairs)
    limit = math.inf if limit < 0 else math.ceil(limit / world)
    ctx = AmplifyContext(
        cfg, out_dir, accelerator.device, resolution, models, aligner, parser, settings, pending, style_groups(cfg)
    )
    if accelerator.is_main_process:
        log.info("%d pairs planned from %s; %d to make (%d processes)", len(jobs), cfg.input_dir, len(pending), world)

    todo = [batch for batch in batches if any(j.index in pending for j in batch)]
    writer = PairWriter(out_dir, ShardWriter(out_dir, rank))
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-prep")
    made, skipped_now, dda_seconds = 0, 0, 0.0
    bar = tqdm(todo, desc=f"amplify {rank + 1}/{world}", unit="batch", disable=not accelerator.is_local_main_process)
    try:
        upcoming = prefetch.submit(prepare_batch, todo[0], ctx) if todo else None
        for index, batch in enumerate(bar):
            if made >= limit:
                break
            prepared = upcoming.result()
            # the next batch's faces are prepared while the model makes this one
            upcoming = prefetch.submit(prepare_batch, todo[index + 1], ctx) if index + 1 < len(todo) else None
            outputs, seconds = amplify_batch(batch, prepared, ctx)
            dda_seconds += seconds
            for record, pair in outputs:
                if record["status"] == "ok" and made >= limit:
                    break  # unwritten pairs stay pending; the same batch makes them next run
                writer.write(record, pair)
                made += record["status"] == "ok"
                skipped_now += record["status"] == "skipped"
            bar.set_postfix(made=made, skipped=skipped_now)
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        writer.close()

    from accelerate.utils import gather_object  # accelerate: only the amplifier's launch needs it, loaded there

    counts = gather_object([{"made": made, "skipped": skipped_now, "dda_seconds": dda_seconds}])
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    merged = merge_manifest(out_dir, jobs)
    return finish(cfg, jobs, merged, counts, time.perf_counter() - start, world, resolution)


# --------------------------------------------------------------------------------------------
# Contact sheet and summary
# --------------------------------------------------------------------------------------------
MASK_COLOURS = {1: (60, 110, 255), 2: (255, 30, 80), 3: (70, 200, 90)}  # eyes, lips, skin


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    for label, colour in MASK_COLOURS.items():
        alpha = 0.25 if label == 3 else 0.55
        region = mask == label
        out[region] = (1 - alpha) * out[region] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def write_contact_sheet(out_dir: Path, records: Sequence[dict], count: int) -> Path | None:
    rows = []
    for record in [r for r in records if r["status"] == "ok"][:count]:
        source_path, target_path, mask_path = pair_files(out_dir, record["name"])
        source, target, mask = read_rgb(source_path), read_rgb(target_path), read_labels(mask_path)
        difference = np.clip((target.astype(np.int16) - source) * 4 + 128, 0, 255).astype(np.uint8)
        rows.append([source, target, difference, mask_overlay(source, mask)])
    if not rows:
        return None
    sheet = make_grid(rows, labels=["source", "target", "difference x4", "mask"])
    return atomic_save_image(sheet, out_dir / "contact_sheet.png")


def finish(cfg, jobs, merged, counts, seconds, world, resolution) -> dict:
    out_dir = Path(cfg.output_dir)
    planned = {job_key(j.input_name, j.variant) for j in jobs}
    in_plan = [r for r in merged if job_key(r["input"], r["variant"]) in planned]
    ok = sum(r["status"] == "ok" for r in in_plan)
    skipped = Counter(r["reason"] for r in in_plan if r["status"] == "skipped")
    made = sum(c["made"] for c in counts)
    sheet = write_contact_sheet(out_dir, in_plan, int(cfg.contact_sheet_count))
    summary = {
        "stage": "dda_amplify",
        "input_dir": str(cfg.input_dir),
        "inputs": len({j.input_name for j in jobs}),
        "planned_pairs": len(jobs),
        "pairs": ok,
        "made": made,
        "resumed": ok - made,
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "remaining": len(jobs) - ok - sum(skipped.values()),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / made, 4) if made else None,
        "images_per_second": round(made / seconds, 4) if made else None,
        "dda_seconds_per_image": round(sum(c["dda_seconds"] for c in counts) / made, 4) if made else None,
        "num_processes": world,
        "batch_size": int(cfg.batch_size),
        "resolution": int(resolution),
        "checkpoint": str(cfg.checkpoint),
        **{k: v for k, v in run_settings(cfg, resolution).items() if k != "resolution"},
        "variants_per_face": int(cfg.variants_per_face),
        "manifest": str(out_dir / MANIFEST),
        "contact_sheet": str(sheet) if sheet else None,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    log.info(
        "made %d pairs (%d in the set, %d resumed), skipped %d %s, %s s/image, %d left",
        made,
        ok,
        summary["resumed"],
        summary["skipped"],
        summary["skipped_by_reason"],
        summary["seconds_per_image"],
        summary["remaining"],
    )
    return summary


# --------------------------------------------------------------------------------------------
# Building the models
# --------------------------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key '{key}' {why}")

    if cfg.amplifier is not None and str(cfg.amplifier) not in AMPLIFIERS:
        raise bad("amplifier", f"must be one of {', '.join(AMPLIFIERS)} or null, not '{cfg.amplifier}'")
    if not 0 <= float(cfg.draft.max_folded) <= 1:
        raise bad("draft.max_folded", f"must be a share in [0, 1], not {cfg.draft.max_folded}")
    if cfg.scheduler is not None and str(cfg.scheduler) not in SCHEDULERS:
        raise bad("scheduler", f"must be one of {', '.join(SCHEDULERS)} or null, not '{cfg.scheduler}'")
    if cfg.strength is not None and not 0 < float(cfg.strength) <= 1:
        raise bad("strength", f"must be in (0, 1] or null, not {cfg.strength}")
    for key in ("num_steps", "batch_size", "variants_per_face"):
        if cfg[key] is not None and int(cfg[key]) < 1:
            raise bad(key, f"must be at least 1, not {cfg[key]}")
    weights = dict(cfg.region_weights)
    if not set(REGIONS) <= set(weights) <= set(WEIGHTS) or any(
        v is not None and (not isinstance(v, (int, float)) or v < 0) for v in weights.values()
    ):
        raise bad(
            "region_weights", f"needs {', '.join(REGIONS)} (and cheeks), each a number >= 0 or null (got {weights})"
        )
    if cfg.styles is not None:
        if not hasattr(cfg.styles, "items") or not set(cfg.styles) <= set(REGIONS):
            raise bad("styles", f"must map regions ({', '.join(REGIONS)}) to DDA checkpoints (got {cfg.styles})")
    for checkpoint, _ in style_groups(cfg):
        if not Path(checkpoint).exists():
            key = "checkpoint" if checkpoint == str(cfg.checkpoint) else "styles"
            raise bad(key, f"names a DDA checkpoint that does not exist: {checkpoint}")
    require_dir(cfg.input_dir, "input folder", "input_dir")


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"config key 'model.dtype' must be auto, float32, float16 or bfloat16, not '{name}'")
    return getattr(torch, name)


def build_models(cfg: DictConfig, device: torch.device) -> tuple[dict, int]:
    """One amplifier per distinct style checkpoint (`amplifier`: null = the one each was trained for; a DDA, a
    makeup draft or both), and the output resolution (the main style's when not set). A null `amplifier` becomes
    the main style's."""
    dtype = model_dtype(str(cfg.model.dtype), device)
    models = {}
    for checkpoint, _ in style_groups(cfg):
        amplifier = load_amplifier(checkpoint, cfg.amplifier, cfg.model.pretrained, device=device, dtype=dtype)
        models[checkpoint] = amplifier
        if amplifier.dda is not None and not cfg.get("fgmm_colour", True):  # the DDA's raw colours
            amplifier.dda.fgmm.set_colours({})
        if amplifier.dda is not None and cfg.model.get("fuse_lora", False):
            amplifier.dda.fuse_lora()
    main = models[str(cfg.checkpoint)]
    if cfg.amplifier is None:  # recorded as what runs: the main style's amplifier
        cfg.amplifier = main.kind
    resolution = int(cfg.resolution) if cfg.resolution is not None else int(main.resolution)
    return models, resolution


def resolve_eye_region(cfg: DictConfig, models: dict) -> None:
    """`face.eye_region` null takes the mask convention the DDA was trained on (its checkpoint); one that differs
    from it is used and logged, as the other sampling settings."""
    trained = {checkpoint: amplifier.eye_region for checkpoint, amplifier in models.items()}
    own = trained[str(cfg.checkpoint)]
    if cfg.face.eye_region is None:
        cfg.face.eye_region = own
    elif str(cfg.face.eye_region) not in EYE_REGIONS:
        raise ConfigError(f"config key 'face.eye_region' must be one of {', '.join(EYE_REGIONS)} or null")
    for checkpoint, region in trained.items():
        if region != cfg.face.eye_region:
            log.warning("face.eye_region=%s, but %s was trained on masks with eye_region=%s", cfg.face.eye_region,
                        checkpoint, region)  # fmt: skip


def resolve_sampling(cfg: DictConfig, dda) -> None:
    """strength, num_steps, scheduler left null take the values the DDA was trained with (its checkpoint);
    a value that differs is kept and logged (`DDA.sampling_settings`). Without a DDA (amplifier=draft) they stay
    null: nothing samples."""
    if dda is None:
        log.info("amplifier=draft: the makeup draft alone, no diffusion")
        return
    settings = dda.sampling_settings(cfg.strength, cfg.num_steps, cfg.scheduler)
    for key, value in settings.items():
        cfg[key] = value
    log.info("sampling: strength %s, %s steps, %s", cfg.strength, cfg.num_steps, cfg.scheduler)


def main(argv: Sequence[str] | None = None) -> dict:
    from accelerate import Accelerator  # accelerate: only the amplifier's launch needs it, loaded there

    _, cfg = parse_stage_args(__doc__, DEFAULT_CONFIG, argv)
    check_config(cfg)
    accelerator = Accelerator()
    if accelerator.is_main_process:
        prepare_run_dir(cfg, log_name="amplify.log")
    else:
        setup_logging(level=logging.WARNING)
    torch.manual_seed(int(cfg.seed))  # nothing should draw from it (pairs have their own generators)
    models, resolution = build_models(cfg, accelerator.device)
    resolve_eye_region(cfg, models)
    aligner, parser = build_face_tools(cfg, resolution, str(cfg.face.eye_region))
    wandb = WandbLogger(cfg, cfg.output_dir, name="dda_amplify") if accelerator.is_main_process else None
    summary = amplify(cfg, accelerator, models, aligner, parser, resolution)
    if wandb is not None:
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        if summary.get("contact_sheet"):
            metrics["contact_sheet"] = wandb.image(summary["contact_sheet"])
        wandb.log(metrics)
        wandb.finish()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
