"""`diffusers-gits demo`: calibrate GITS on the embedded default model and show, with numbers, what it buys."""

import time
from pathlib import Path

import torch

from .evaluation import (
    UNetDenoiser,
    load_default_pipeline,
    mean_and_ci,
    per_sample_rmse,
    reference_sigmas,
    solve,
    start_noise,
)
from .plotting import save_error_plot, save_image_grid
from .schedules import baseline_schedules
from .scheduling_gits import GITSScheduler


#: Test noises use seeds from here on; calibration uses seeds below num_warmup.
TEST_SEED = 1_000_000


def run_demo(
    output_dir: str | Path = "demo_output",
    solver: str = "dpmpp_2m",
    steps: tuple[int, ...] = (4, 5, 6, 8, 10),
    num_warmup: int = 256,
    num_test: int = 128,
    reference_steps: int = 200,
    progress: bool = True,
    echo=print,
) -> dict[str, dict[int, float]]:
    """Calibrate, compare GITS with the baseline schedules on held-out test noises, print a table, write PNGs.

    Returns:
        `{schedule name: {NFE: mean RMSE to the reference}}`.
    """
    output_dir = Path(output_dir)
    pipe = load_default_pipeline()
    echo(f"Embedded model: DDPMPipeline on scikit-learn digits (16x16), SD noise schedule; solver {solver}.")
    tic = time.perf_counter()
    scheduler = GITSScheduler.from_calibration(
        pipe, list(steps), num_warmup=num_warmup, batch_size=64, solver=solver, progress=progress
    )
    calibration_s = time.perf_counter() - tic
    scheduler.save_pretrained(output_dir / "scheduler")
    meta = scheduler.calibration_record
    echo(
        f"Calibrated in {calibration_s:.1f} s ({meta['model_calls']['total']} model calls, "
        f"{meta['model_calls']['teacher_equivalents']}x one teacher run over the warm-ups)."
    )

    noise = scheduler.noise_schedule
    denoiser = UNetDenoiser(pipe.unet, noise, pipe.scheduler.config.prediction_type)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z = start_noise(num_test, shape, TEST_SEED)
    echo(
        f"Reference: {reference_steps}-step iPNDM solve of the same ODE from {num_test} test noises never used in calibration."
    )
    reference = solve(denoiser, z, reference_sigmas(noise, reference_steps), "ipndm")

    errors: dict[str, dict[int, float]] = {}
    samples: dict[str, torch.Tensor] = {}
    for k in steps:
        schedules = {**baseline_schedules(noise, k), "gits (calibrated)": scheduler.schedule_for(k)}
        for name, sigmas in schedules.items():
            out = solve(denoiser, z, sigmas, solver)
            errors.setdefault(name, {})[k] = mean_and_ci(per_sample_rmse(out, reference))[0]
            if k == steps[1 if len(steps) > 1 else 0]:
                samples[name] = out[:16]

    names = list(errors)
    echo("")
    echo(f"RMSE to reference (lower is better), solver {solver}")
    echo(f"{'NFE':>4} " + " ".join(f"{n[:20]:>20}" for n in names) + f" {'gits / best baseline':>21}")
    for k in steps:
        best = min(errors[n][k] for n in names if not n.startswith("gits ("))
        row = " ".join(f"{errors[n][k]:>20.4f}" for n in names)
        echo(f"{k:>4} {row} {errors['gits (calibrated)'][k] / best:>21.3f}")

    plot = save_error_plot(errors, output_dir / "error_vs_nfe.png", f"Embedded digits model, {solver}")
    k_shown = steps[1 if len(steps) > 1 else 0]
    rows = ["uniform", "karras", "gits (calibrated)"]
    grid = save_image_grid(
        torch.cat([samples[r] for r in rows] + [reference[:16]]), output_dir / f"samples_nfe{k_shown}.png", columns=16
    )
    echo("")
    echo(f"Wrote {plot}, {grid} (rows: {', '.join(rows)}, reference; same noises) and {output_dir / 'scheduler'}.")
    return errors
