"""Make a makeup style, start to end: five seed pairs -> DDA -> amplified pairs -> TinyBeauty -> a style folder.

    python make_style.py --template configs/makeup/smoky_eye.yaml --faces ../shared/data/faces_more --out weights/styles/smoky_eye
    python make_style.py --import before/ after/ --faces ../shared/data/faces_more --out runs/my_style --title "My look"
    python make_style.py ... (the same command again)      # after a kill: resumes at the stage it stopped in
    python tinybeauty_inference.py --style weights/styles/smoky_eye --input photos/ --output out/ --full-photo

The stage scripts run underneath as subprocesses (as run_demo.py does: no stage script imports another),
with the stage defaults for the shipped face prior (weights/face_prior) in configs/style/*.yaml:
  1. make_seed_pairs.py      five seed pairs: --num-seeds faces of --faces made up by --template, or your
                             own before/after photos (--import BEFORE AFTER: the same file names in both)
  2. dda_training.py         the amplifier (configs/dda.yaml `amplifier`): the makeup draft from the seeds, and the DDA
                             over the prior at 128 px when the amplifier has one (configs/style/dda.yaml)
  3. dda_amplify.py          --amplify N (default 1000) faces of --faces that were not seeds -> pairs at 256
     data.makeup_truth       (--template only) the template rendered on those crops: the pairs' makeup R^2
  4. tinybeauty_training.py  TinyBeauty on the amplified pairs (configs/style/tinybeauty.yaml)
  5. tinybeauty_export.py    the int8 and fp32 ONNX exports (and, with scripts/setup_mobile.sh, the Android
                             .tflite and iOS .mlpackage), checked against PyTorch
Then OUT/ is a style folder (deploy/styles.py): tinybeauty_fp32.onnx, tinybeauty_int8.onnx, README.md (the
model card: the command, the seed faces, the time on this machine, the data licence, the measured quality)
and style.json, plus summary.md (what each stage did). The work lives in OUT/work/ (--work DIR elsewhere):
each stage's folder and log (work/logs/), and make_style.json, the arguments it was started with.

A progress bar runs per stage (epochs, pairs). Killed at any point, the same command goes on where it
stopped: finished stages are skipped, the DDA resumes from its last checkpoint (`--resume`, every
`train.checkpoint_every` epochs), the amplifier skips the pairs it wrote, TinyBeauty resumes from
tinybeauty_last.pt; the time already spent is kept. A rerun with other arguments on the same --out stops
and says which differ. `--dda-args`, `--amplify-args` and `--tinybeauty-args` pass key=value overrides
to a stage (e.g. `--dda-args "train.epochs=300"`); `--quality FILE` puts measured figures (a JSON object,
e.g. from bench/dal_eval.py) on the model card.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from common import REPO_ROOT, atomic_write_text, format_seconds, load_config, run_cli
from data.io import list_images
from deploy.mobile_env import PHONE_FORMATS, mobile_python
from deploy.styles import MODEL_FILES, PHONE_FILES, file_digest, write_style
from errors import InputError, MakeupError

FACE_PRIOR = REPO_ROOT / "weights" / "face_prior"
STYLE_CONFIGS = REPO_ROOT / "configs" / "style"
LICENCE = (
    "**Non-commercial research use only.** The seed and amplified faces of the shipped styles come from "
    "SCUT-FBP5500 and CelebAMask-HQ, and the face prior that made the pairs (weights/face_prior) was trained on "
    "them; both datasets are released for non-commercial research use only, and so is this model."
)
# The arguments that define a style: a rerun on the same --out must give the same ones.
DEFINING = ("template", "import_dirs", "faces", "num_seeds", "amplify", "pretrained", "dda_args", "amplify_args",
            "tinybeauty_args", "seed_size")  # fmt: skip


@dataclass
class Stage:
    key: str
    title: str
    command: Callable[[], list[str]]  # built when the stage starts: a resume depends on what is on disk
    done: Path  # the file whose presence means the stage finished
    total: int  # units of the progress bar
    unit: str
    progress: Callable[[str | None], int | None] = field(default=lambda line: None)  # a log line -> units done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    seeds = parser.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--template", metavar="YAML", help="a makeup template (configs/makeup/*.yaml)")
    seeds.add_argument("--import", dest="import_dirs", nargs=2, metavar=("BEFORE", "AFTER"),
                       help="your own before/after photos, the same file names in both folders")  # fmt: skip
    parser.add_argument("--faces", required=True, metavar="DIR", help="plain face photos: the seeds and the amplified")
    parser.add_argument("--out", required=True, metavar="DIR", help="the style folder to write")
    parser.add_argument("--work", default=None, metavar="DIR", help="intermediate files (default: OUT/work)")
    parser.add_argument("--title", default=None, help="the style's name in menus (default: from the template)")
    parser.add_argument("--description", default="", help="one line on the look, for menus and the card")
    parser.add_argument("--num-seeds", type=int, default=5, help="seed pairs with --template (default: 5)")
    parser.add_argument("--amplify", type=int, default=1000, help="faces to amplify into pairs (default: 1000)")
    parser.add_argument("--pretrained", default=str(FACE_PRIOR), help="the DDA's base model (default: the face prior)")
    parser.add_argument("--seed-size", type=int, default=256, help="seed pair crop size (default: 256)")
    parser.add_argument("--dda-args", default="", help="key=value overrides for dda_training.py")
    parser.add_argument("--amplify-args", default="", help="key=value overrides for dda_amplify.py")
    parser.add_argument("--tinybeauty-args", default="", help="key=value overrides for tinybeauty_training.py")
    parser.add_argument("--phone", choices=("auto", "yes", "no"), default="auto",
                        help="add the Android .tflite and iOS .mlpackage (auto: when scripts/setup_mobile.sh has "
                             "made their environment; default: %(default)s)")  # fmt: skip
    parser.add_argument("--quality", default=None, metavar="JSON", help="measured figures for the model card")
    args = parser.parse_args(argv)
    if args.amplify < 1 or args.num_seeds < 1:
        parser.error("--amplify and --num-seeds must be at least 1")
    return args


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------
def epoch_progress(pattern: str) -> Callable[[str | None], int | None]:
    regex = re.compile(pattern)

    def progress(line: str | None) -> int | None:
        match = regex.search(line or "")
        return int(match.group(1)) if match else None

    return progress


def count_files(folder: Path, pattern: str) -> Callable[[str | None], int]:
    return lambda line: len(list(folder.glob(pattern))) if folder.is_dir() else 0


def count_lines(path: Path) -> Callable[[str | None], int]:
    return lambda line: sum(1 for _ in open(path)) if path.is_file() else 0


def latest(folder: Path, pattern: str) -> Path | None:
    """The checkpoint with the highest epoch number in its name (dda_checkpoint_epoch_N.pt)."""
    found = sorted(folder.glob(pattern), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return found[-1] if found else None


def stage_config(default: str, overlay: str, overrides: list[str]):
    return load_config(REPO_ROOT / "configs" / default, overrides, STYLE_CONFIGS / overlay)


def build_stages(args: argparse.Namespace, work: Path) -> list[Stage]:
    py, seed, dda, amp = sys.executable, work / "seed_pairs", work / "dda_model", work / "amplified"
    tb, export, faces = work / "tinybeauty_model", work / "export", work / "amplify_faces"
    dda_over, amp_over, tb_over = (shlex.split(a) for a in (args.dda_args, args.amplify_args, args.tinybeauty_args))
    dda_cfg = stage_config("dda.yaml", "dda.yaml", dda_over)
    # the draft alone trains nothing: one step; a DDA: its epochs
    dda_total, dda_unit = (1, "step") if dda_cfg.amplifier == "draft" else (dda_cfg.train.epochs, "epoch")
    tb_epochs = stage_config("tinybeauty.yaml", "tinybeauty.yaml", tb_over).train.epochs
    source = ["--faces", args.faces, "--template", args.template, "--num", str(args.num_seeds)] if args.template else [
        "--import", *args.import_dirs]  # fmt: skip

    def dda_command() -> list[str]:
        checkpoint = latest(dda, "dda_checkpoint_epoch_*.pt")
        if checkpoint is not None:  # the checkpoint holds the config: it continues exactly
            return [py, "dda_training.py", "--resume", str(checkpoint)]
        return [py, "dda_training.py", "--config", str(STYLE_CONFIGS / "dda.yaml"), f"model.pretrained={args.pretrained}",
                f"data.root={seed}", f"output_dir={dda}", *dda_over]  # fmt: skip

    def tinybeauty_command() -> list[str]:
        if (tb / "tinybeauty_last.pt").is_file():
            return [py, "tinybeauty_training.py", "--resume", str(tb / "tinybeauty_last.pt")]
        return [py, "tinybeauty_training.py", "--config", str(STYLE_CONFIGS / "tinybeauty.yaml"), f"data.root={amp}",
                f"output_dir={tb}", *tb_over]  # fmt: skip

    stages = [
        Stage("seed_pairs", "1. seed pairs (make_seed_pairs.py)",
              lambda: [py, "make_seed_pairs.py", *source, "--output", str(seed), "--size", str(args.seed_size)],
              seed / "summary.json", args.num_seeds, "pair", count_files(seed / "source", "*.png")),
        Stage("dda", f"2. amplifier: {dda_cfg.amplifier} (dda_training.py)", dda_command, dda / "summary.json",
              dda_total, dda_unit, epoch_progress(r"\bepoch (\d+):")),
        Stage("amplify", "3. amplification (dda_amplify.py)",
              lambda: [py, "dda_amplify.py", "--config", str(STYLE_CONFIGS / "dda_amplify.yaml"),
                       f"checkpoint={dda / 'dda_final.pt'}", f"input_dir={faces}", f"output_dir={amp}",
                       f"num_images={args.amplify}", *amp_over],
              amp / "summary.json", args.amplify, "face", count_lines(amp / "manifest.jsonl")),
    ]  # fmt: skip
    if args.template:  # HOOK: a template gives the truth; a --truth stage (TinyBeauty against it) goes here too
        stages.append(Stage("truth", "3b. amplified pairs against the template's truth (data.makeup_truth)",
                            lambda: [py, "-m", "data.makeup_truth", str(amp), args.template, str(work / "truth")],
                            work / "truth" / "summary.json", 1, "step"))  # fmt: skip
    stages += [
        Stage("tinybeauty", "4. TinyBeauty training (tinybeauty_training.py)", tinybeauty_command,
              tb / "summary.json", tb_epochs, "epoch", epoch_progress(r"\bepoch (\d+)/\d+")),
        Stage("export", "5. ONNX and phone exports (tinybeauty_export.py)",
              lambda: [py, "tinybeauty_export.py", "--checkpoint", str(tb / "tinybeauty_best_psnr.pt"),
                       "--output", str(export), "--format", ",".join(export_formats(args.phone))],
              export / "export_report.json", 1, "step"),
    ]  # fmt: skip
    return stages


def export_formats(phone: str) -> list[str]:
    """onnx, plus tflite and coreml with --phone yes, or auto when their environment exists (else a line says so)."""
    if phone == "no":
        return ["onnx"]
    try:
        mobile_python()
    except InputError as err:
        if phone == "yes":
            raise
        print(f"phone formats skipped: {err}")
        return ["onnx"]
    return ["onnx", *PHONE_FORMATS]


def prepare_amplify_faces(args: argparse.Namespace, work: Path) -> int:
    """work/amplify_faces/: links to the first --amplify faces of --faces that were not seeds; returns how many."""
    seeds = set(json.loads((work / "seed_pairs" / "summary.json").read_text()).get("names", []))
    folder = work / "amplify_faces"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in list_images(args.faces) if p.stem not in seeds][: args.amplify]
    if not chosen:
        raise InputError(f"no faces left to amplify in {args.faces} (the {len(seeds)} seed faces are not amplified)")
    for path in chosen:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return len(chosen)


# --------------------------------------------------------------------------------------------
# Running a stage: a subprocess, its log, a progress bar, the time kept across kills
# --------------------------------------------------------------------------------------------
class Timings:
    """Seconds per stage, summed over every run of make_style.py on this folder (a kill loses at most 5 s)."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + seconds, 1)
        atomic_write_text(self.path, json.dumps(self.seconds, indent=1))

    def stage_ended(self) -> None:
        """Keep the machine's 1-minute load as a stage ends: the card reports that, not the load of a later rerun
        that only rewrites the card (e.g. with --quality)."""
        atomic_write_text(self.load_path, json.dumps({"load_1min": round(os.getloadavg()[0], 2)}))

    @property
    def load(self) -> float:
        """The load when the last stage ended (now, for a folder made before it was kept)."""
        path = self.load_path
        return json.loads(path.read_text())["load_1min"] if path.is_file() else os.getloadavg()[0]

    @property
    def load_path(self) -> Path:
        return self.path.with_name("load.json")


def run_stage(stage: Stage, log_path: Path, timings: Timings) -> None:
    command = stage.command()
    resumed = "--resume" in command or (stage.key == "amplify" and stage.progress(None))
    print(f"\n{stage.title}{' (resuming)' if resumed else ''}\n$ {shlex.join(command)}\n  log: {log_path}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)  # fmt: skip
        done = [stage.progress(None) or 0]

        def read_output() -> None:  # the log, and the progress from its lines
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                value = stage.progress(line)
                if value is not None:
                    done[0] = max(done[0], value)

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        start = last_save = time.perf_counter()
        bar = tqdm(total=stage.total, initial=min(done[0], stage.total), unit=stage.unit, desc=stage.key, disable=None)
        try:
            while process.poll() is None:
                time.sleep(0.5)
                bar.update(max(0, min(done[0], stage.total) - bar.n))
                if time.perf_counter() - last_save > 5:  # so a kill keeps the time spent so far
                    timings.add(stage.key, time.perf_counter() - last_save)
                    last_save = time.perf_counter()
        finally:
            if process.poll() is None:  # make_style.py itself is stopping: take the stage down with it
                process.terminate()
                process.wait(timeout=60)
            timings.add(stage.key, time.perf_counter() - last_save)
            reader.join(timeout=10)
            bar.close()
    if process.returncode != 0 or not stage.done.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        what = f"exit status {process.returncode}" if process.returncode else f"it wrote no {stage.done}"
        raise MakeupError(f"{stage.title} failed ({what}); the end of {log_path}:\n{tail}")
    timings.stage_ended()
    print(f"  done in {format_seconds(time.perf_counter() - start)}", flush=True)


# --------------------------------------------------------------------------------------------
# The folder: same arguments on a rerun, one run at a time
# --------------------------------------------------------------------------------------------
def check_same_arguments(args: argparse.Namespace, work: Path) -> None:
    path = work / "make_style.json"
    given = {key: getattr(args, key) for key in DEFINING}
    given = json.loads(json.dumps(given))  # tuples as lists, as read back
    if path.is_file():
        before = json.loads(path.read_text())["arguments"]
        differ = [key for key in DEFINING if before.get(key) != given[key]]
        if differ:
            changes = ", ".join(f"{k}: {before.get(k)!r} then, {given[k]!r} now" for k in differ)
            raise InputError(f"{work} holds a style started with other arguments ({changes}): give the same "
                             f"arguments to resume it, or another --out / --work to make a new one")  # fmt: skip
        return
    record = {"arguments": given, "command": command_line(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(path, json.dumps(record, indent=1))


def take_lock(work: Path) -> Path:
    lock = work / ".lock"
    if lock.is_file():
        pid = int(lock.read_text().strip() or 0)
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ProcessLookupError, PermissionError, ValueError):
            alive = False
        if alive:
            raise InputError(f"another make_style.py (pid {pid}) is working in {work}; wait for it or stop it")
    atomic_write_text(lock, str(os.getpid()))
    return lock


def command_line() -> str:
    return shlex.join(["python", "make_style.py", *sys.argv[1:]])


# --------------------------------------------------------------------------------------------
# The style folder: the exports, the model card, style.json, summary.md
# --------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def quality_figures(args: argparse.Namespace, work: Path) -> dict:
    """What was measured, for the card: the amplified pairs against the template's truth (the truth stage),
    TinyBeauty's validation on the amplified pairs, int8 against PyTorch, and --quality's figures.
    HOOK: TinyBeauty against the template's truth on held-out faces (a --truth stage) adds its figures here."""
    truth, tb, export = (read_json(work / p) for p in ("truth/summary.json", "tinybeauty_model/summary.json",
                                                        "export/export_report.json"))  # fmt: skip
    figures = {}
    if truth:
        r2 = {key: "n/a" if truth.get(key) is None else f"{truth[key]:.2f}" for key in ("r2", "r2_lips", "r2_eyes")}
        figures["amplified pairs vs the template's truth"] = (
            f"makeup R^2 {r2['r2']} over the face (lips {r2['r2_lips']}, eyes {r2['r2_eyes']}) on {truth['faces']} "
            f"faces; {truth['psnr_db']:.2f} dB against {truth['identity_psnr_db']:.2f} dB for the plain faces")  # fmt: skip
    if tb:
        figures["TinyBeauty on the amplified pairs' validation split"] = (
            f"{tb['best_val_psnr']:.2f} dB PSNR against the amplified targets on {tb['pairs_val']} faces (the plain "
            f"faces: {tb['identity_psnr']:.2f} dB), after {tb['epochs']} epochs on {tb['pairs_train']} pairs")  # fmt: skip
    if export:
        figures["int8 against PyTorch"] = (
            f"{export['int8']['drop_db_vs_pytorch']:+.3f} dB on {export['faces_checked']} held-out faces "
            f"(fp32: max |error| {export['fp32']['max_abs_error']:.1e})")  # fmt: skip
    if args.quality:
        figures.update({str(k): str(v) for k, v in read_json(Path(args.quality)).items()})
    return figures


def seed_faces(args: argparse.Namespace, work: Path) -> str:
    names = read_json(work / "seed_pairs" / "summary.json").get("names", [])
    if args.template:
        return (f"{len(names)} plain faces of `{args.faces}` ({', '.join(names)}), made up by the template "
                f"`{args.template}` (data/makeup_render.py)")  # fmt: skip
    before, after = args.import_dirs
    return f"{len(names)} before/after photo pairs imported from `{before}` and `{after}` ({', '.join(names)})"


AMPLIFIER_WORDS = {
    "draft": "the makeup draft (the seeds' change carried onto each face by its landmarks; `amplifier: draft`)",
    "draft+dda": "the makeup draft corrected by the DDA over the base model `{pretrained}` (`amplifier: draft+dda`)",
    "dda": "the DDA over the base model `{pretrained}` (`amplifier: dda`)",
}


def amplifier_words(amplifier: str, pretrained: str) -> str:
    return AMPLIFIER_WORDS.get(amplifier, amplifier).format(pretrained=pretrained)


def cores_used() -> str:
    """The cores this process may run on (taskset, a container's limit) out of the machine's, for the card."""
    total = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    threads = os.environ.get("OMP_NUM_THREADS")
    thread_words = f", {threads} torch thread(s) per stage" if threads else ""
    if allowed == total:
        return f"{total} CPU core(s){thread_words}"
    return f"{allowed} of the machine's {total} CPU cores{thread_words}"


def write_card(args: argparse.Namespace, work: Path, out: Path, timings: Timings, title: str) -> str:
    total = sum(timings.seconds.values())
    amp = read_json(work / "amplified" / "summary.json")
    sizes = {p: (work / "export" / MODEL_FILES[p]).stat().st_size / 1024 for p in MODEL_FILES}
    quality = quality_figures(args, work)
    measured = [f"- {what}: {value}" for what, value in quality.items()]
    if not args.quality:
        measured.append("- TinyBeauty against the template's truth on held-out faces: not measured by make_style.py "
                        "(`python bench/dal_eval.py` measures it; `--quality FILE` puts its figures here)")  # fmt: skip
    per_stage = " / ".join(f"{key} {format_seconds(s)}" for key, s in timings.seconds.items())
    return f"""# {title} (`{out.name}`)

{args.description or "A makeup style"}: a TinyBeauty model made by this repository's Data Amplify Learning
(`make_style.py`) from five seed pairs. Use it without training:
`python tinybeauty_inference.py --style {out.name} --input photos/ --output out/ --full-photo`,
`python tinybeauty_video.py --style {out.name} ...`, or the web page (`python web/serve.py`).

| file | size | what |
|---|---|---|
| `tinybeauty_fp32.onnx` | {sizes["fp32"]:.1f} KB | the default of `--style` and of the web page |
| `tinybeauty_int8.onnx` | {sizes["int8"]:.1f} KB | the phone's (`--precision int8`) |
{phone_rows(work)}
## Command
```
{command_line()}
```

## Seed faces
{seed_faces(args, work)}. Amplified: {amp.get("pairs", "?")} pairs from {amp.get("inputs", "?")} faces of
`{args.faces}` that were not seeds, by {amplifier_words(amp.get("amplifier", "dda"), args.pretrained)}.

## Time
{format_seconds(total)} on {cores_used()} ({per_stage}), summed over every run of the command;
measured on a shared machine (load average {timings.load:.1f} when its last stage finished).

## Data and licence
{LICENCE}

## Quality
{chr(10).join(measured)}
"""


def phone_rows(work: Path) -> str:
    """The card's rows for the Android and iOS files, with their parity figures, when the export made them."""
    phone = read_json(work / "export" / "export_report.json").get("phone", {})
    rows = []
    if "tflite" in phone:
        lite = phone["tflite"]["int8"]
        rows.append(f"| `{PHONE_FILES['tflite']}` | {lite['size_kb']:.1f} KB | Android, LiteRT full-integer int8 "
                    f"({-lite['drop_db_vs_pytorch']:+.3f} dB against PyTorch on the held-out faces) |")  # fmt: skip
    if "coreml" in phone:
        rows.append(f"| `{PHONE_FILES['coreml']}` | {phone['coreml']['size_kb']:.1f} KB | iOS, Core ML ML program "
                    "fp16 (spec checked on Linux; predictions need macOS) |")  # fmt: skip
    return "".join(row + "\n" for row in rows)


def write_summary(stages: list[Stage], ran: dict[str, bool], work: Path, out: Path, timings: Timings) -> Path:
    rows = [f"| {s.title} | {'ran now' if ran.get(s.key) else 'done before'} | "
            f"{format_seconds(timings.seconds.get(s.key, 0))} | `{s.done}` |" for s in stages]  # fmt: skip
    text = "\n".join([
        f"# make_style.py: {out.name}", "", f"`{command_line()}`", "",
        "| stage | this run | time (all runs) | output |", "|---|---|---|---|", *rows, "",
        f"Style folder: `{out}` ({', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))}); "
        f"logs: `{work / 'logs'}`.", "",
    ])  # fmt: skip
    return atomic_write_text(out / "summary.md", text)


def finish(args: argparse.Namespace, work: Path, out: Path, timings: Timings) -> None:
    title = args.title or (Path(args.template).stem.replace("_", " ").capitalize() if args.template else out.name)
    meta = {"title": title, "description": args.description, "template": args.template, "made_by": "make_style.py",
            "command": command_line(), "model_size": read_json(work / "export" / "export_report.json").get("image_size"),
            "amplifier": read_json(work / "amplified" / "summary.json").get("amplifier", "dda"),
            "seconds": round(sum(timings.seconds.values()), 1)}  # fmt: skip
    card = write_card(args, work, out, timings, title)
    export = work / "export"
    phone = {kind: export / name for kind, name in PHONE_FILES.items() if (export / name).exists()}
    style = write_style(out, export / MODEL_FILES["fp32"], export / MODEL_FILES["int8"], card, meta, phone)
    print(f"\nstyle {style.name} written to {out} (fp32 {file_digest(style.model('fp32'))[:12]})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    lock = take_lock(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill runs the finally clauses (the stage's child)
    try:
        check_same_arguments(args, work)
        timings, ran = Timings(work / "timings.json"), {}
        stages = build_stages(args, work)
        for number, stage in enumerate(stages, 1):
            if stage.done.is_file():
                print(f"[done before] {stage.title}: {stage.done}")
                continue
            if stage.key == "amplify":
                stage.total = min(stage.total, prepare_amplify_faces(args, work))
            run_stage(stage, work / "logs" / f"{number}_{stage.key}.log", timings)
            ran[stage.key] = True
        finish(args, work, out, timings)
        summary = write_summary(stages, ran, work, out, timings)
        print(f"done in {format_seconds(sum(timings.seconds.values()))} (all runs); report: {summary}")
    finally:
        lock.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
