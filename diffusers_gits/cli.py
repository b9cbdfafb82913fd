"""Command line: `diffusers-gits demo | calibrate | compare | analyze | show | push`. Each command is one library call and a printout."""

import argparse
import logging
import sys
from pathlib import Path

from .errors import CalibrationError
from .solvers import SOLVERS


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _command(commands, name: str, help_text: str, examples: list[str]) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help_text.replace("%", "%%"),  # argparse %-formats help strings (not descriptions)
        description=help_text[0].upper() + help_text[1:] + ".\n\nexamples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    """How the pipeline is loaded and called: shared by the commands that run a model."""
    command.add_argument("--prompts", type=Path, help="text file, one prompt per line (text-to-image pipelines)")
    command.add_argument("--guidance", type=_positive_float, help="guidance scale passed to the pipeline")
    command.add_argument("--height", type=_positive_int, help="image height passed to the pipeline")
    command.add_argument("--width", type=_positive_int, help="image width passed to the pipeline")
    command.add_argument(
        "--device",
        help="torch device (default: this process's GPU under accelerate launch / torchrun, else cuda if available, "
        "else cpu); with cpu, processes started by torchrun or accelerate launch --multi_gpu join over gloo",
    )
    command.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="auto",
        help="weights' dtype (default: auto = float32 on cpu; on a GPU float16 for UNet pipelines (SD, SDXL) and "
        "bfloat16 for transformer pipelines (SD3, Flux, QwenImage, ...), whose activations overflow float16)",
    )


#: The `--dtype` choices; `auto` is resolved by `resolve_dtype`.
DTYPES = ("auto", "float16", "bfloat16", "float32")


def resolve_dtype(choice: str, device: str, model_index: dict):
    """The torch dtype to load a pipeline in: `choice` itself, or for `auto` float32 on a CPU, float16 on a GPU for
    pipelines whose denoiser is a `unet`, bfloat16 for the others (transformers: SD3, Flux, ...)."""
    import torch

    if choice not in DTYPES:
        raise ValueError(f"dtype {choice!r} is not supported; choose one of {list(DTYPES)}")
    if choice != "auto":
        return getattr(torch, choice)
    if not device.startswith("cuda"):
        return torch.float32
    return torch.float16 if "unet" in model_index else torch.bfloat16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-gits", description="GITS time schedules for diffusers pipelines.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = _command(
        commands,
        "demo",
        "text to image in few steps on an embedded model (no network): calibrate GITS with prompts and guidance, "
        "compare it with the schedules people use (RMSE to a reference, prompt adherence), write labelled image "
        "grids and a plot",
        [
            "diffusers-gits demo",
            "diffusers-gits demo --model flow",
            "diffusers-gits demo --solver unipc --output out/",
        ],
    )
    demo.add_argument(
        "--model",
        choices=["sd", "flow"],
        default="sd",
        help="sd: the StableDiffusionPipeline; flow: the StableDiffusion3Pipeline (default: sd)",
    )
    demo.add_argument("--solver", choices=sorted(SOLVERS), default="dpmpp_2m", help="sampler (default: dpmpp_2m)")
    demo.add_argument(
        "--output",
        default="demo_output",
        help="folder for PNGs, results.json and the scheduler (default: demo_output)",
    )
    demo.add_argument("--steps", type=_positive_int, nargs="+", default=[4, 5, 6, 8, 10], help="NFEs to compare")
    demo.add_argument(
        "--num-warmup",
        type=_positive_int,
        default=None,
        help="calibration samples (default: 64 for --model sd, 32 for the slower flow model)",
    )
    demo.add_argument(
        "--num-test", type=_positive_int, default=32, help="fresh noises and prompts to score (default: 32)"
    )

    calibrate = _command(
        commands,
        "calibrate",
        "calibrate GITS schedules for a diffusers pipeline (a Hub id or a local folder) and save them with a model card",
        [
            "diffusers-gits calibrate stable-diffusion-v1-5/stable-diffusion-v1-5 --steps 5 6 8 10 --prompts prompts.txt --output sd15-gits",
            "diffusers-gits calibrate ./my-ddpm --steps 4 6 --num-warmup 64 --output out --push-to-hub me/my-ddpm-gits",
            "accelerate launch --num_processes 4 -m diffusers_gits calibrate MODEL --steps 6 --output out "
            "--checkpoint-dir ckpt",
        ],
    )
    calibrate.add_argument("model", help="Hub model id or local pipeline folder")
    calibrate.add_argument("--steps", type=_positive_int, nargs="+", required=True, help="step counts to calibrate")
    calibrate.add_argument(
        "--num-warmup",
        type=_positive_int,
        default=256,
        help="warm-up samples (default: 256; the calls scale with them: 1024, 4x the calls, lets the held-out race "
        "settle more choices: worth it for a schedule you will share)",
    )
    calibrate.add_argument(
        "--batch-size", type=_positive_int, default=16, help="samples per pipeline call (default: 16)"
    )
    calibrate.add_argument(
        "--solver",
        choices=sorted(SOLVERS),
        default=None,
        help="sampler (default: dpmpp_2m; unipc for a pipeline shipping UniPC with flow sigmas, as Wan does)",
    )
    calibrate.add_argument(
        "--budget",
        type=_positive_float,
        default=2.0,
        help="most model calls in all, as a multiple of num-warmup x 61 (one teacher run; default: 2.0)",
    )
    calibrate.add_argument(
        "--output", type=Path, required=True, help="folder for scheduler_config.json, README.md, plot"
    )
    calibrate.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub model repo")
    calibrate.add_argument("--subfolder", help="subfolder in the Hub repo (default: the repo root)")
    calibrate.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="store every finished pipeline call here; rerunning the same command resumes where it stopped",
    )
    calibrate.add_argument(
        "--no-resume", action="store_true", help="empty --checkpoint-dir first and start the calibration over"
    )
    _add_model_arguments(calibrate)

    compare = _command(
        commands,
        "compare",
        "score schedules on your own model and settings against a fine teacher on fresh noises: a table with 95% "
        "confidence intervals and a plot of error against NFE",
        [
            "diffusers-gits compare ./my-ddpm --steps 6 8 --schedules default uniform karras ays sd15 gits:my-ddpm-gits",
            "diffusers-gits compare stable-diffusion-v1-5/stable-diffusion-v1-5 --steps 6 --prompts prompts.txt "
            "--guidance 7.5 --schedules default karras gits:me/sd15-gits --output cmp",
        ],
    )
    compare.add_argument("model", help="Hub model id or local pipeline folder")
    compare.add_argument("--steps", type=_positive_int, nargs="+", required=True, help="step counts to compare")
    compare.add_argument(
        "--schedules",
        nargs="+",
        default=["default", "uniform", "karras"],
        help="default, a baseline (uniform, karras, logsnr, ays, sd15; flow: uniform, shifted, stock_default, beta, "
        "karras, exponential, oss_flux), tors (equal frame rotation on 16 more teacher runs) or gits:PATH_OR_REPO "
        "(default: default uniform karras)",
    )
    compare.add_argument("--solver", choices=sorted(SOLVERS), default="dpmpp_2m", help="sampler (default: dpmpp_2m)")
    compare.add_argument("--num-noises", type=_positive_int, default=64, help="fresh noises (default: 64)")
    compare.add_argument(
        "--batch-size", type=_positive_int, default=16, help="samples per pipeline call (default: 16)"
    )
    compare.add_argument("--output", type=Path, default=Path("gits_compare"), help="folder for the PNGs")
    _add_model_arguments(compare)

    analyze = _command(
        commands,
        "analyze",
        "record sampling trajectories through a pipeline and measure the regularity GITS relies on (deviation from "
        "the chord, its principal directions, the boomerang profile, convergence of the x0 estimates); writes plots",
        [
            "diffusers-gits analyze",
            "diffusers-gits analyze stable-diffusion-v1-5/stable-diffusion-v1-5 --prompts prompts.txt --guidance 7.5 "
            "--num-samples 64 --output sd15-geometry",
        ],
    )
    analyze.add_argument(
        "model", nargs="?", help="Hub model id or local pipeline folder (default: the embedded digits model)"
    )
    analyze.add_argument("--num-samples", type=_positive_int, default=32, help="trajectories (default: 32)")
    analyze.add_argument("--steps", type=_positive_int, default=60, help="steps per trajectory (default: 60)")
    analyze.add_argument(
        "--batch-size", type=_positive_int, default=16, help="samples per pipeline call (default: 16)"
    )
    analyze.add_argument("--output", type=Path, default=Path("gits_analysis"), help="folder for the PNGs")
    _add_model_arguments(analyze)

    show = _command(
        commands,
        "show",
        "show the schedules a folder or Hub repo holds: a table per calibration and a plot",
        [
            "diffusers-gits show sd15-gits",
            "diffusers-gits show me/sd15-gits --subfolder sd15/512 --plot schedules.png",
        ],
    )
    show.add_argument("source", help="local folder or Hub model repo")
    show.add_argument("--subfolder", help="one calibration in the repo (default: list them all)")
    show.add_argument("--revision", help="Hub branch, tag or commit")
    show.add_argument(
        "--plot", type=Path, default=Path("gits_schedules.png"), help="PNG to write (default: gits_schedules.png)"
    )

    push = _command(
        commands,
        "push",
        "upload a saved schedule folder to a Hub model repo, with a model card and plot",
        ["diffusers-gits push sd15-gits me/sd15-gits --subfolder sd15/512-cfg7.5"],
    )
    push.add_argument("folder", type=Path, help="folder holding scheduler_config.json")
    push.add_argument("repo", help="Hub model repo, created if needed")
    push.add_argument("--subfolder", help="subfolder in the repo (default: the repo root)")
    return parser


def load_pipeline(args: argparse.Namespace):
    """The pipeline, prompts and call kwargs the model arguments name."""
    import torch
    from diffusers import DiffusionPipeline

    from .calibration.execution import process_state

    # Each process of a launch loads the pipeline on its own device (accelerate's choice for GPUs).
    state = process_state(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = str(state.device) if args.device in (None, "cuda") else args.device
    dtype = resolve_dtype(args.dtype, device, DiffusionPipeline.load_config(args.model))
    prompts = None
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{args.prompts} holds no prompts")
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe_kwargs = {"guidance_scale": args.guidance, "height": args.height, "width": args.width}
    return pipe, prompts, {k: v for k, v in pipe_kwargs.items() if v is not None}


def run_calibrate(args: argparse.Namespace) -> None:
    import json

    from accelerate import PartialState

    from .model_card import write_schedule_folder
    from .scheduling_gits import GITSScheduler

    pipe, prompts, pipe_kwargs = load_pipeline(args)
    scheduler = GITSScheduler.from_calibration(
        pipe,
        args.steps,
        prompts=prompts,
        num_warmup=args.num_warmup,
        batch_size=min(args.batch_size, args.num_warmup),
        solver=args.solver,
        budget=args.budget,
        checkpoint_dir=args.checkpoint_dir,
        resume=not args.no_resume,
        **pipe_kwargs,
    )
    if not PartialState().is_main_process:  # every process holds the same result: one writes and reports it
        return
    config = json.loads(scheduler.to_json_string())
    write_schedule_folder(config, args.output, args.push_to_hub, args.subfolder, scheduler.calibration_record)
    print_schedule(scheduler, str(args.output))
    if args.push_to_hub:
        print(f"pushed: {scheduler.push_to_hub(args.push_to_hub, subfolder=args.subfolder)}")


def print_schedule(scheduler, title: str) -> None:
    from .model_card import closest_text

    meta = scheduler.config.calibration or {}
    print(f"{title}: solver {scheduler.config.solver}, model {meta.get('model')}, {meta.get('pipe_kwargs', {})}")
    report = scheduler.calibration_report or {}
    print(
        f"{'steps':>5}  {'chosen':>20}  {'held-out RMSE':>13}  {'default':>9}  {'best baseline (ratio)':>28}  sigmas"
    )
    for k in scheduler.calibrated_steps:
        entry = report.get(str(k), {})
        chosen = entry.get("chosen", "-")
        gits = f"{entry['gits_error']:.4g}" if entry.get("gits_error") is not None else "-"
        default = f"{entry['default_error']:.4g}" if entry.get("default_error") is not None else "-"
        closest = entry.get("closest_baseline")
        versus = closest_text(closest)
        sigmas = ", ".join(f"{s:.4g}" for s in scheduler.config.gits_sigmas[str(k)])
        print(f"{k:>5}  {chosen:>20}  {gits:>13}  {default:>9}  {versus:>28}  {sigmas}")
    for k in scheduler.calibrated_steps:
        if report.get(str(k), {}).get("summary"):
            print(f"{k:>5} steps: {report[str(k)]['summary']}")


def run_compare(args: argparse.Namespace) -> None:
    from .compare import compare_schedules, format_table

    pipe, prompts, pipe_kwargs = load_pipeline(args)
    table = compare_schedules(
        pipe,
        args.steps,
        args.schedules,
        prompts=prompts,
        solver=args.solver,
        num_noises=args.num_noises,
        batch_size=args.batch_size,
        output_dir=args.output,
        **pipe_kwargs,
    )
    print(f"{args.model}, solver {args.solver}, {args.num_noises} fresh noises, RMSE to the teacher:")
    print(format_table(table))
    print(f"plots: {args.output}")


def run_analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze, format_summary
    from .embedded import embedded_model_path

    args.model = args.model or str(embedded_model_path("digits"))
    pipe, prompts, pipe_kwargs = load_pipeline(args)
    summary = analyze(
        pipe,
        args.num_samples,
        prompts=prompts,
        num_steps=args.steps,
        batch_size=args.batch_size,
        output_dir=args.output,
        **pipe_kwargs,
    )
    print(f"{args.model}:")
    print(format_summary(summary))
    print(f"plots: {args.output}")


def run_show(args: argparse.Namespace) -> None:
    from .model_card import list_schedules
    from .plotting import save_schedule_plot
    from .scheduling_gits import GITSScheduler

    subfolders = (
        [args.subfolder] if args.subfolder else [e["subfolder"] for e in list_schedules(args.source, args.revision)]
    )
    if not subfolders:
        raise ValueError(f"{args.source} holds no scheduler_config.json")
    schedules = {}
    for subfolder in subfolders:
        scheduler = GITSScheduler.from_pretrained(args.source, subfolder=subfolder, revision=args.revision)
        print_schedule(scheduler, f"{args.source}" + (f"/{subfolder}" if subfolder else ""))
        schedules.update({k: scheduler.config.gits_sigmas[str(k)] for k in scheduler.calibrated_steps})
    print(f"plot: {save_schedule_plot(schedules, args.plot)}")


def run_push(args: argparse.Namespace) -> None:
    from .scheduling_gits import GITSScheduler

    scheduler = GITSScheduler.from_pretrained(args.folder)
    print(f"pushed: {scheduler.push_to_hub(args.repo, subfolder=args.subfolder)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.output, args.model, args.solver, tuple(args.steps), args.num_warmup, args.num_test)
        elif args.command == "calibrate":
            run_calibrate(args)
        elif args.command == "compare":
            run_compare(args)
        elif args.command == "analyze":
            run_analyze(args)
        elif args.command == "show":
            run_show(args)
        else:
            run_push(args)
    # Bad input (ValueError, which the package's ScheduleLoadError and CheckpointMismatchError are), unusable model
    # output (CalibrationError) and missing files or models (OSError) are the user's to fix: one line. Anything else is
    # a bug and keeps its traceback.
    except (ValueError, CalibrationError, OSError) as error:
        if args.debug:
            raise
        print(f"diffusers-gits: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
