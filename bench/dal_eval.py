"""Data Amplify Learning measured end to end against a makeup template's ground truth (JSON, last line).

    python bench/dal_eval.py --template configs/makeup/classic_red_lip.yaml --pretrained prior/face_prior_128
    python bench/dal_eval.py --template configs/makeup/smoky_eye.yaml --pretrained prior/face_prior_128 \\
        --out bench/results/dal_eval_smoky_eye.json
    python bench/dal_eval.py --template ... --pretrained runs/tiny_sd --amplify 12 --heldout 6 \\
        --dda "train.resolution=64 train.epochs=2" --tinybeauty "train.epochs=1 data.size=64" --size 64   # smoke

A makeup template (configs/makeup/*.yaml) rendered on a face is that face's true made-up version, so
every part of the chain can be scored. The bench runs the project's own stage scripts:
1. `make_seed_pairs.py`: `--seeds` (5) seed pairs from `--seed-faces` (the bundled sample faces by default);
2. `dda_training.py` on them over `--pretrained` (any SD-1.5-shaped folder);
3. `dda_amplify.py` on `--amplify` faces of `--faces` that stages 1-2 never saw, at `--size`;
4. the truth: the template rendered on the very crop the amplifier wrote (face parser on that crop);
5. scores of the amplified targets against the truth, and of the DDA on its own seed pairs;
6. `tinybeauty_training.py` three ways, each on as many pairs and for the same steps: the amplified
   pairs, the 5 seed pairs alone (repeated to the same count), and truth pairs on the same faces;
7. all three scored against the truth on `--heldout` further faces, unseen by every stage.

A learned style (`--pairs DIR`, e.g. ../shared/data/pairs_style1) has no template: its own pairs are the truth.
Five of them (`--seeds`) go through `make_seed_pairs.py --import` as a user's photos would, the DDA trains on
them, and the amplifier is scored on `--score` other pairs of the style (stage 3 on their plain photos, the
style's target cut by the same affine); TinyBeauty trains on `--amplify` faces of `--faces` (default
shared/data/faces_more) amplified, on the five seeds alone, and on the style's remaining true pairs (each
repeated to as many pairs), and is scored on `--heldout` pairs of the style that no stage saw.

    python bench/dal_eval.py --pairs ../shared/data/pairs_style1 --pretrained weights/face_prior \\
        --dda "train.resolution=128 train.epochs=300 train.lr=1e-3 loss.l1=20" --until amplify

`--amplifier` picks what stage 2 trains and stage 3 runs (`dda`, `draft`, `draft+dda`; default: configs/dda.yaml's).
Each amplifier has its own folders in the work folder (`dda_draft/`, `amplified_draft/`, ...; plain `dda/` and
`amplified/` for dda), and the seeds-alone and truth arms of TinyBeauty are trained once and reused, so the three
arms are three runs on one `--work`:

    for a in dda draft draft+dda; do python bench/dal_eval.py --template ... --amplifier $a --work runs/red \
        --out bench/results/red_$a.json; done

The unseen faces are also scored by group (`groups`): SCUT-FBP5500's four by name prefix (AF, AM, CF, CM), and
with `--group-faces DIR` (e.g. shared/data/celebamask/images) further faces amplified and scored by skin tone
(the individual typology angle of the skin's CIELAB colour: light, >= 28 degrees; darker, below).

With `calibrate=K` in `--dda`, the amplified faces are made and scored twice: with the calibrated FGMM weights
(the default) and with the weights the DDA learned (`amplified_vs_truth_learned_fgmm`).

Scores: `data/makeup_truth.py` (PSNR and identity PSNR against the truth, makeup-residual R^2 over
the face, the lips and the eyes, and the lips' change as a share of the truth's).

Writes everything under `--work` (default runs/dal_eval/TEMPLATE), and the JSON to `--out` too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dda_amplify
import dda_training
import make_seed_pairs
import tinybeauty_training
from common import atomic_save_image, atomic_write_text, from_uint8, load_checkpoint, load_config, log, to_uint8
from data.face_align import FaceAligner
from data.face_crops import SkipInput, build_face_tools, prepare_face
from data.face_parsing import EYE_REGIONS, FaceParser
from data.io import list_images, read_labels, read_rgb, resize_labels, resize_rgb
from data.makeup_render import load_template
from data.makeup_truth import load_pairs, render_truth, score
from dda_amplify import DEFAULT_CONFIG
from models.dda_io import AMPLIFIERS, load_dda
from models.tinybeauty import load_tinybeauty

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def seed_face_digests(seed_faces: Path, seed_dir: Path) -> set[str]:
    """Content digests of the photos stage 1 turned into seed pairs (the pairs are named by the photo's stem)."""
    used = {p.stem for p in list_images(seed_dir / "source")}
    return {file_digest(p) for p in list_images(seed_faces) if p.stem in used}


def split_faces(
    faces_dir: Path, work: Path, amplify: int, heldout: int, seed: int, exclude: set[str] = frozenset()
) -> tuple[Path, Path, list[str]]:
    """Two folders of symlinks: `amplify` faces for stage 3, `heldout` others for scoring (a seeded shuffle),
    and the names of the photos left out.

    Photos whose content digest is in `exclude` (the seed faces: the bundled samples are copies of
    shared/data/faces photos) go to neither folder, so "unseen" means unseen by the DDA. They are dropped
    after the shuffle, so the other faces keep their places.
    """
    files = list_images(faces_dir)
    seen = [f.name for f in files if exclude and file_digest(f) in exclude]
    # Every later step reuses what the work folder holds (amplified pairs, crops, truth): a folder made for
    # another split would mix its faces into this one, held-out faces into the training sets included.
    split = {"faces": str(faces_dir), "amplify": amplify, "heldout": heldout, "seed": seed, "excluded": seen}
    record = work / "split.json"
    if record.is_file() and json.loads(record.read_text()) != split:
        raise SystemExit(
            f"error: {work} was made for the split {record.read_text().strip()}, not {json.dumps(split)}; "
            "give another --work for these --faces/--amplify/--heldout/--seed"
        )
    atomic_write_text(record, json.dumps(split))
    order = [i for i in np.random.default_rng(seed).permutation(len(files)) if files[i].name not in seen]
    if len(order) < amplify + heldout:
        raise SystemExit(
            f"error: {faces_dir} has {len(order)} images besides the {len(seen)} seed faces; "
            f"--amplify + --heldout need {amplify + heldout}: lower one, or take the seed faces from another folder"
        )
    if seen:
        log.info("split: %d seed face(s) of %s left out of the unseen faces: %s", len(seen), faces_dir, ", ".join(seen))
    folders = []
    for name, chosen in (("faces_amplify", order[:amplify]), ("faces_heldout", order[amplify : amplify + heldout])):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in chosen:
            link = folder / files[index].name
            if not link.exists():
                os.symlink(files[index].resolve(), link)
        folders.append(folder)
    return folders[0], folders[1], seen


def prepare_heldout(faces_dir: Path, out_dir: Path, size: int) -> None:
    """Held-out faces cropped exactly as stage 3 crops them (no DDA): source and mask."""
    aligner, parser = build_face_tools(load_config(DEFAULT_CONFIG), size)  # stage 3's own face settings
    with aligner, parser:
        for path in list_images(faces_dir):
            if (out_dir / "source" / f"{path.stem}.png").exists():
                continue
            try:
                face = prepare_face(path, aligner, parser, size)
            except SkipInput as skip:
                log.warning("held-out %s skipped: %s", path, skip.reason)
                continue
            atomic_save_image(face.mask, out_dir / "mask" / f"{path.stem}.png")
            atomic_save_image(face.source, out_dir / "source" / f"{path.stem}.png")


def replicate_pairs(pairs_dir: Path, out_dir: Path, count: int) -> None:
    """`count` pairs cycling through the few in `pairs_dir` (symlinks), so a training run on them takes as
    many steps per epoch as one on `count` distinct pairs."""
    names = [p.stem for p in list_images(pairs_dir / "source")]
    for kind in ("source", "target", "mask"):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = names[i % len(names)]
        for kind in ("source", "target", "mask"):
            link = out_dir / kind / f"r{i:04d}_{name}.png"
            if not link.exists():
                os.symlink((pairs_dir / kind / f"{name}.png").resolve(), link)


@torch.no_grad()
def dda_on_seeds(dda_dir: Path, seed_dir: Path, region_weights: dict[str, float] | None = None) -> dict:
    """The trained DDA on its own seed pairs at its training resolution, against their targets (`region_weights`:
    FGMM overrides, e.g. the weights it learned before a calibration)."""
    dda = load_dda(dda_dir / "dda_final.pt")
    size = dda.resolution
    preds, truths, sources, masks = [], [], [], []
    for index, (source, target, mask) in enumerate(load_pairs(seed_dir).values()):
        source, target = resize_rgb(source, size), resize_rgb(target, size)
        mask = np.array(resize_labels(mask, size))
        generator = torch.Generator().manual_seed(index)
        labels = torch.from_numpy(mask.astype(np.int64))[None]
        out = dda.img2img(from_uint8(source)[None], labels, region_weights=region_weights, generator=generator)
        preds.append(to_uint8(out[0]))
        truths.append(target)
        sources.append(source)
        masks.append(mask)
    return score(preds, truths, sources, masks) | {
        "rdm_alpha": round(float(dda.rdm.alpha), 4),
        "fgmm": {k: round(v, 4) for k, v in dda.fgmm.weights(region_weights).items()},
    }


@torch.no_grad()
def vae_ceiling(vae, pairs: dict[str, tuple], resolution: int) -> dict:
    """What a perfect DDA could reach through this VAE at its resolution: the scores of
    source + (decode(encode(truth)) - decode(encode(source))) on every makeup-labelled pixel.

    The DDA's change is decode(LoRA latent) - decode(base latent) (RDM adds back the rest), made at its
    training resolution and resized onto the pair (`DDA._img2img_resized`), so a latent edit that hit the
    truth's latent exactly would still lose what the VAE cannot carry at that size: thin liner, soft
    edges. `vae` is a diffusers AutoencoderKL (any module with its encode/decode interface).
    """

    preds, truths, sources, masks = [], [], [], []
    dtype = next((p.dtype for p in vae.parameters()), torch.float32)
    for source, truth, mask in pairs.values():
        s, t = from_uint8(source)[None], from_uint8(truth)[None]
        size = s.shape[-2:]
        if size != (resolution, resolution):
            mode = "area" if size[-1] > resolution else "bilinear"
            s_r = F.interpolate(s, size=(resolution, resolution), mode=mode)
            t_r = F.interpolate(t, size=(resolution, resolution), mode=mode)
        else:
            s_r, t_r = s, t
        both = torch.cat([t_r, s_r]).to(dtype)
        decoded = vae.decode(vae.encode(both).latent_dist.mean).sample.float()
        change = decoded[:1] - decoded[1:]
        if change.shape[-2:] != size:
            change = F.interpolate(change, size=size, mode="bilinear", align_corners=False)
        made_up = torch.from_numpy(mask > 0)[None, None]
        preds.append(to_uint8(torch.where(made_up, s + change, s).clamp(-1, 1)[0]))
        truths.append(truth)
        sources.append(source)
        masks.append(mask)
    return score(preds, truths, sources, masks) | {"resolution": int(resolution)}


@torch.no_grad()
def tinybeauty_on(checkpoint: Path, truth: dict[str, tuple]) -> dict:
    model = load_tinybeauty(checkpoint)
    preds, truths, sources, masks = [], [], [], []
    items = list(truth.values())
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        batch = torch.stack([from_uint8(s) for s, _, _ in chunk])
        preds.extend(to_uint8(model(batch).clamp(-1, 1)))
        for source, target, mask in chunk:
            truths.append(target)
            sources.append(source)
            masks.append(mask)
    return score(preds, truths, sources, masks)


def seed_pairs_at(seed_dir: Path, size: int) -> dict[str, tuple]:
    """The seed pairs resized to the DDA's resolution, as `dda_on_seeds` scores them."""
    return {
        name: (resize_rgb(source, size), resize_rgb(target, size), np.array(resize_labels(mask, size)))
        for name, (source, target, mask) in load_pairs(seed_dir).items()
    }


def load_vae(pretrained: str):
    # diffusers takes seconds to import: loaded when a model is built
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(pretrained, subfolder="vae", torch_dtype=torch.float32).eval()


GROUP_PREFIXES = {"AF": "SCUT Asian female", "AM": "SCUT Asian male", "CF": "SCUT Caucasian female",
                  "CM": "SCUT Caucasian male", "celeba_": "CelebAMask-HQ"}  # fmt: skip
LIGHT_ITA = 28.0  # degrees: the individual typology angle above which skin counts as light/intermediate (Chardin)


def face_group(name: str) -> str:
    return next((group for prefix, group in GROUP_PREFIXES.items() if name.startswith(prefix)), "other")


def group_scores(made_dir: Path, truth_dir: Path, names: list[str], group=face_group) -> dict:
    """`score_folders` per group of faces (`group(name)`), with the group's size."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group(name), []).append(name)
    return {g: score_folders(made_dir, truth_dir, members) for g, members in sorted(groups.items())}


def skin_ita(source: np.ndarray, mask: np.ndarray) -> float:
    """The individual typology angle (degrees) of the skin's mean CIELAB colour: higher is lighter."""
    import cv2  # only this bench's grouping needs it here

    lab = cv2.cvtColor(source.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[mask == 3]
    lightness, b = float(lab[:, 0].mean()), float(lab[:, 2].mean())
    return float(np.degrees(np.arctan2(lightness - 50.0, b)))


def skin_tone_groups(args, dda_dir: Path, template, work: Path, timed: Timer) -> dict:
    """--group-faces amplified by this amplifier and scored against the template's truth, by skin tone."""
    faces = work / "faces_groups"
    if not faces.is_dir():
        faces.mkdir(parents=True)
        for path in list_images(Path(args.group_faces)):
            os.symlink(path.resolve(), faces / path.name)
    amplified = amplify(args, dda_dir, faces, work / arm(args, "amplified_groups"), timed, "dda_amplify_groups")
    truth_dir = work / "truth_groups"
    names = render_truth(amplified, template, truth_dir)
    truth = load_pairs(truth_dir, names)
    itas = {name: skin_ita(truth[name][0], truth[name][2]) for name in names}

    def tone(name: str) -> str:
        return (
            f"ITA >= {LIGHT_ITA:g} (light, intermediate)"
            if itas[name] >= LIGHT_ITA
            else f"ITA < {LIGHT_ITA:g} (tan, brown, dark)"
        )

    return {"faces": str(args.group_faces), "ita": {n: round(v, 1) for n, v in itas.items()}} | group_scores(
        amplified, truth_dir, names, tone
    )


def dda_resolution(dda_dir: Path) -> int:
    return int(load_checkpoint(dda_dir / "dda_final.pt")["dda"]["settings"]["resolution"])


def _overrides(text: str) -> list[str]:
    return shlex.split(text or "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--template", help="configs/makeup/NAME.yaml: the truth is the template rendered on each face")
    mode.add_argument("--pairs", help="a learned style's pair folder (source/ target/): its own pairs are the truth")
    parser.add_argument("--pretrained", required=True, help="SD-1.5-shaped diffusers folder (or hub id) for the DDA")
    parser.add_argument(
        "--faces", default=None, help="faces to amplify (default: shared/data/faces, faces_more with --pairs)"
    )
    parser.add_argument("--seed-faces", default=str(REPO / "data" / "samples" / "faces"))
    parser.add_argument("--seeds", type=int, default=5, help="seed pairs the DDA trains on (default 5, the paper's)")
    parser.add_argument("--amplify", type=int, default=300, help="faces to amplify (default 300)")
    parser.add_argument(
        "--score", type=int, default=60, help="--pairs: unseen pairs of the style the amplifier is scored on"
    )
    parser.add_argument("--heldout", type=int, default=100, help="faces (pairs with --pairs) to score TinyBeauty on")
    parser.add_argument("--size", type=int, default=256, help="amplified pair size (default 256)")
    parser.add_argument("--eye-region", choices=EYE_REGIONS, default="lid", help="the seed masks' eye label (stage 1)")
    parser.add_argument(
        "--amplifier", choices=AMPLIFIERS, default=None, help="stage 2's amplifier (default: the config's)"
    )
    parser.add_argument("--group-faces", default=None, help="--template: more faces to amplify and score by skin tone")
    parser.add_argument("--dda", default="", help="extra dda_training.py overrides, one string")
    parser.add_argument("--amplify-args", default="", help="extra dda_amplify.py overrides, one string")
    parser.add_argument("--tinybeauty", default="train.epochs=20", help="tinybeauty_training.py overrides")
    parser.add_argument("--work", default=None, help="work folder (default runs/dal_eval/NAME)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument(
        "--until", choices=("dda", "amplify", "all"), default="all", help="stop after the DDA's or the amplified scores"
    )
    args = parser.parse_args(argv)
    args.amplifier = args.amplifier or str(load_config(dda_training.DEFAULT_CONFIG).amplifier)
    shared = REPO.parent / "shared" / "data"
    args.faces = args.faces or str(shared / ("faces_more" if args.pairs else "faces"))
    return args


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        return result


def arm(args, name: str) -> str:
    """A folder name of this amplifier's: `name` for the DDA alone (as before the draft), `name_draft`, ..."""
    return name if args.amplifier == "dda" else f"{name}_{args.amplifier.replace('+', '_')}"


def train_dda(args, seeds: Path, work: Path, timed: Timer) -> Path:
    dda_dir = work / arm(args, "dda")
    if not (dda_dir / "dda_final.pt").is_file():
        dda_args = [f"model.pretrained={args.pretrained}", f"data.root={seeds}", f"output_dir={dda_dir}"]
        dda_args += ["wandb.mode=disabled", f"data.num_pairs={args.seeds}", f"amplifier={args.amplifier}"]
        timed("dda_training", dda_training.main, dda_args + _overrides(args.dda))
    return dda_dir


def score_dda(args, dda_dir: Path, seeds: Path, results: dict) -> int:
    """The amplifier on its own seed pairs (the DDA's output; each seed drafted from the others) and, for the DDA
    alone, their VAE ceiling; returns the amplifier's resolution."""
    summary = json.loads((dda_dir / "summary.json").read_text())
    results["amplifier"] = args.amplifier
    if summary.get("draft"):
        results["draft_on_seeds"] = summary["draft"]["leave_one_out_mean"]
    if args.amplifier == "draft":
        return int(summary["draft"]["size"])
    own = dda_dir / "draft_pairs" if summary.get("draft") else seeds  # what it trained on: the seeds, or their drafts
    results["dda_on_seeds"] = dda_on_seeds(dda_dir, own)
    results["dda_region_conditioning"] = summary.get("region_conditioning", False)
    results["dda_calibration"] = summary.get("calibration")
    if results["dda_calibration"]:  # the same DDA with the FGMM weights it learned, before the calibration
        learned = results["dda_calibration"]["learned_fgmm"]
        results["dda_on_seeds_learned_fgmm"] = dda_on_seeds(dda_dir, own, learned)
    resolution = dda_resolution(dda_dir)
    if args.amplifier == "dda":
        results["dda_seeds_vae_ceiling"] = vae_ceiling(
            load_vae(args.pretrained), seed_pairs_at(seeds, resolution), resolution
        )
    return resolution


def amplify(args, dda_dir: Path, faces: Path, out: Path, timed: Timer, name: str, extra: list[str] = ()) -> Path:
    amp_args = [f"checkpoint={dda_dir / 'dda_final.pt'}", f"input_dir={faces}", f"output_dir={out}"]
    amp_args += [f"resolution={args.size}", "wandb.mode=disabled", *extra]
    timed(name, dda_amplify.main, amp_args + _overrides(args.amplify_args))
    return out


def learned_weights(results: dict) -> list[str] | None:
    """region_weights overrides that undo a calibration (the FGMM weights the DDA learned), or None."""
    calibration = results.get("dda_calibration")
    if not calibration:
        return None
    return [f"region_weights.{region}={value}" for region, value in calibration["learned_fgmm"].items()]


def score_folders(made_dir: Path, truth_dir: Path, names: list[str]) -> dict:
    """`made_dir`'s targets against `truth_dir`'s, over the regions of `truth_dir`'s masks."""
    made, truth = load_pairs(made_dir, names), load_pairs(truth_dir, names)
    preds, truths = [made[n][1] for n in names], [truth[n][1] for n in names]
    return score(preds, truths, [made[n][0] for n in names], [truth[n][2] for n in names])


def score_amplified(args, run: tuple, truth_dir: Path, names: list[str], resolution: int, timed, results: dict) -> None:
    """The amplified targets against the truth; with a calibrated DDA the same faces again with the FGMM weights it
    learned (what the calibration changed); and the same faces through a perfect latent edit (the VAE ceiling)."""
    dda_dir, faces, amplified = run
    results["amplified_vs_truth"] = score_folders(amplified, truth_dir, names)
    uncalibrated = learned_weights(results)
    if uncalibrated:
        out = amplified.with_name(amplified.name + "_learned_fgmm")
        learned = amplify(args, dda_dir, faces, out, timed, "dda_amplify_learned", uncalibrated)
        results["amplified_vs_truth_learned_fgmm"] = score_folders(learned, truth_dir, names)
    results["groups"] = group_scores(amplified, truth_dir, names)
    if args.amplifier == "dda":  # what a perfect latent edit could reach (the DDA alone goes through the VAE)
        truth_pairs = load_pairs(truth_dir, names)
        vae = load_vae(args.pretrained)
        results["amplified_vae_ceiling"] = timed("vae_ceiling", vae_ceiling, vae, truth_pairs, resolution)


def tinybeauty_arms(args, arms: dict[str, Path], heldout: dict, work: Path, timed: Timer, results: dict) -> None:
    """TinyBeauty trained on each arm's pairs, scored on the held-out pairs; the gains between the arms."""
    results["tinybeauty"] = {}
    for arm_name, root in arms.items():
        out = work / (arm(args, "tinybeauty_amplified") if arm_name == "amplified" else f"tinybeauty_{arm_name}")
        if not (out / "tinybeauty_final.pt").is_file():
            tb_args = [f"data.root={root}", f"output_dir={out}", "wandb.mode=disabled", f"data.size={args.size}"]
            timed(f"tinybeauty_{arm_name}", tinybeauty_training.main, tb_args + _overrides(args.tinybeauty))
        results["tinybeauty"][arm_name] = tinybeauty_on(out / "tinybeauty_final.pt", heldout)
    tb = {arm: scores["psnr_db"] for arm, scores in results["tinybeauty"].items()}
    results["gain_amplified_over_seeds_db"] = round(tb["amplified"] - tb["seeds_only"], 3)
    results["gap_truth_minus_amplified_db"] = round(tb["truth"] - tb["amplified"], 3)
    gap = tb["truth"] - tb["seeds_only"]
    results["share_of_gap_closed"] = round((tb["amplified"] - tb["seeds_only"]) / gap, 3) if gap > 0 else None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return learned_style(args) if args.pairs else template_run(args)


def template_run(args) -> dict:
    """A makeup template: seeds rendered on --seed-faces, truth rendered on every amplified and held-out crop."""
    template = load_template(args.template)
    work = Path(args.work or REPO / "runs" / "dal_eval" / str(template.name))
    work.mkdir(parents=True, exist_ok=True)
    timed = Timer()
    seeds = work / "seed_pairs"
    timed(
        "seed_pairs",
        make_seed_pairs.main,
        ["--faces", args.seed_faces, "--template", args.template, "--num", str(args.seeds), "--size", str(args.size)]
        + ["--output", str(seeds), "--eye-region", args.eye_region],
    )
    dda_dir = train_dda(args, seeds, work, timed)
    results: dict = {"template": str(template.name), "pretrained": args.pretrained}
    resolution = score_dda(args, dda_dir, seeds, results)
    if args.until == "dda":
        return finish(results, timed.seconds, args)
    exclude = seed_face_digests(Path(args.seed_faces), seeds)
    amplify_faces, heldout_faces, results["seed_faces_left_out"] = split_faces(
        Path(args.faces), work, args.amplify, args.heldout, args.seed, exclude
    )
    amplified = amplify(args, dda_dir, amplify_faces, work / arm(args, "amplified"), timed, "dda_amplify")
    truth_dir = work / "truth_amplified"  # the crops are the same for every amplifier: one truth
    names = timed("truth", render_truth, amplified, template, truth_dir)
    score_amplified(args, (dda_dir, amplify_faces, amplified), truth_dir, names, resolution, timed, results)
    if args.group_faces:
        results["groups_by_skin_tone"] = timed("groups", skin_tone_groups, args, dda_dir, template, work, timed)
    if args.until == "amplify":
        return finish(results, timed.seconds, args)

    heldout_crops = work / "heldout_crops"
    timed("heldout_crops", prepare_heldout, heldout_faces, heldout_crops, args.size)
    heldout_truth = work / "heldout_truth"
    timed("heldout_truth", render_truth, heldout_crops, template, heldout_truth)
    seeds_repeated = work / "seed_pairs_repeated"
    replicate_pairs(seeds, seeds_repeated, len(names))
    arms = {"amplified": amplified, "seeds_only": seeds_repeated, "truth": truth_dir}
    tinybeauty_arms(args, arms, load_pairs(heldout_truth), work, timed, results)
    return finish(results, timed.seconds, args)


# --------------------------------------------------------------------------------------------
# A learned style (--pairs): five of its pairs are the seeds, its other pairs the truth
# --------------------------------------------------------------------------------------------
def split_style_pairs(pairs_dir: Path, work: Path, seeds: int, heldout: int, seed: int) -> dict[str, list[str]]:
    """A seeded shuffle of the style's pair names: `seeds` for the DDA, `heldout` for TinyBeauty's score, the rest
    (`pool`) for the amplifier's score and the truth arm. Recorded in style_split.json; another split refuses the folder."""
    names = sorted(
        set(p.stem for p in list_images(pairs_dir / "source")) & set(p.stem for p in list_images(pairs_dir / "target"))
    )
    if len(names) < seeds + heldout + 1:
        raise SystemExit(
            f"error: {pairs_dir} has {len(names)} pairs; --seeds + --heldout need {seeds + heldout} and more"
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    split = {"seeds": order[:seeds], "heldout": order[seeds : seeds + heldout], "pool": order[seeds + heldout :]}
    record = work / "style_split.json"
    wanted = {"pairs": str(pairs_dir), "seed": seed, **split}
    if record.is_file() and json.loads(record.read_text()) != wanted:
        raise SystemExit(f"error: {work} was made for another split of the pairs; give another --work")
    atomic_write_text(record, json.dumps(wanted))
    return split


def photos_by_name(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in list_images(folder)}


def link_photos(pairs_dir: Path, names: list[str], out: Path) -> tuple[Path, Path]:
    """out/before and out/after: symlinks to the named pairs' source and target photos."""
    folders = []
    for kind, sub in (("before", "source"), ("after", "target")):
        folder, photos = out / kind, photos_by_name(pairs_dir / sub)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / photos[name].name
            if not link.exists():
                os.symlink(photos[name].resolve(), link)
        folders.append(folder)
    return folders[0], folders[1]


def import_pairs(pairs_dir: Path, names: list[str], work: Path, label: str, args, timed: Timer) -> Path:
    """The named pairs through `make_seed_pairs.py --import`: aligned and parsed as a user's own pairs are."""
    before, after = link_photos(pairs_dir, names, work / f"photos_{label}")
    out = work / label
    command = ["--import", str(before), str(after), "--output", str(out), "--size", str(args.size)]
    timed(f"import_{label}", make_seed_pairs.main, command + ["--eye-region", args.eye_region])
    return out


SCORED_EYE_REGION = "area"  # learned styles are scored over the whole eye area: they paint brows and lash lines too


def style_truth(amplified: Path, pairs_dir: Path, out: Path, size: int) -> list[str]:
    """Each amplified crop's true target: the style's own target photo cut by the very affine stage 3 used
    (manifest `matrix`), beside the amplified source and the mask the score uses: the source crop parsed with
    eye_region=area, whatever the DDA was trained with, so every setting is scored over the same pixels.
    Returns the names written."""

    # Stage 3 cuts at max(size, face.parse_size) and resizes to `size`; its manifest matrix is scaled to `size`.
    crop_size = max(size, int(load_config(dda_amplify.DEFAULT_CONFIG).face.parse_size))
    cutter, targets = FaceAligner(size=crop_size), photos_by_name(pairs_dir / "target")
    parser, names = FaceParser(eye_region=SCORED_EYE_REGION), []
    for line in (amplified / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["status"] != "ok":
            continue
        name = record["name"]
        if not (out / "target" / f"{name}.png").exists():
            target = read_rgb(targets[Path(record["input"]).stem])
            matrix = np.asarray(record["matrix"], np.float64) * (crop_size / size)
            crop = np.array(resize_rgb(cutter.crop_with_matrix(matrix, target), size))
            source = read_rgb(amplified / "source" / f"{name}.png")
            parse = parser.parse(source)
            mask = read_labels(amplified / "mask" / f"{name}.png") if parse is None else parse.makeup
            atomic_save_image(source, out / "source" / f"{name}.png")
            atomic_save_image(np.asarray(mask, np.uint8), out / "mask" / f"{name}.png")
            atomic_save_image(crop, out / "target" / f"{name}.png")
        names.append(name)
    parser.close()
    return names


def learned_style(args) -> dict:
    pairs_dir = Path(args.pairs)
    work = Path(args.work or REPO / "runs" / "dal_eval" / pairs_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    timed = Timer()
    split = split_style_pairs(pairs_dir, work, args.seeds, args.heldout, args.seed)
    seeds = import_pairs(pairs_dir, split["seeds"], work, "seed_pairs", args, timed)
    dda_dir = train_dda(args, seeds, work, timed)
    results: dict = {"pairs": str(pairs_dir), "pretrained": args.pretrained, "seed_names": split["seeds"]}
    resolution = score_dda(args, dda_dir, seeds, results)
    if args.until == "dda":
        return finish(results, timed.seconds, args)

    # The amplifier on unseen faces of the style, scored against the style's own targets on the same crops.
    scored = split["pool"][: args.score]
    photos, _ = link_photos(pairs_dir, scored, work / "photos_scored")
    amplified_style = amplify(args, dda_dir, photos, work / arm(args, "amplified_style"), timed, "dda_amplify_style")
    truth_dir = work / "truth_style"
    names = timed("truth", style_truth, amplified_style, pairs_dir, truth_dir, args.size)
    score_amplified(args, (dda_dir, photos, amplified_style), truth_dir, names, resolution, timed, results)
    if args.until == "amplify":
        return finish(results, timed.seconds, args)

    amplify_faces, _, _ = split_faces(Path(args.faces), work, args.amplify, 0, args.seed)
    amplified = amplify(args, dda_dir, amplify_faces, work / arm(args, "amplified"), timed, "dda_amplify")
    count = sum(1 for _ in (amplified / "target").glob("*.png"))
    truth_pool = import_pairs(pairs_dir, split["pool"], work, "truth_pairs", args, timed)
    heldout = import_pairs(pairs_dir, split["heldout"], work, "heldout_pairs", args, timed)
    arms = {"amplified": amplified, "seeds_only": work / "seed_pairs_repeated", "truth": work / "truth_pairs_repeated"}
    replicate_pairs(seeds, arms["seeds_only"], count)
    replicate_pairs(truth_pool, arms["truth"], count)
    results["tinybeauty_pairs"] = {"amplified": count, "truth_distinct": len(list_images(truth_pool / "source"))}
    tinybeauty_arms(args, arms, load_pairs(heldout), work, timed, results)
    return finish(results, timed.seconds, args)


def finish(results: dict, timings: dict, args) -> dict:
    results["seconds"] = timings
    results["settings"] = vars(args)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
