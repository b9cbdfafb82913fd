"""Quality and cost benchmark of GITS on the embedded default model; writes benchmarks/RESULTS.md and results.json.

    python benchmarks/quality.py            # the full run (about 30 minutes on 2 CPU cores)
    python benchmarks/quality.py --quick    # a smaller smoke run, results written under /tmp

Metric 1: RMSE of each N-step sample to a 500-step iPNDM solution of the same ODE from the same noise, over test noises
never used in calibration (mean and 95% CI). Metric 2: sliced Wasserstein distance (pixel space) of the N-step samples
to the 297 real digits held out of the model's training. Speed is reported as ratios measured in the same run.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler

from diffusers_gits import GITSScheduler, __version__
from diffusers_gits.data import digits_images
from diffusers_gits.demo import TEST_SEED
from diffusers_gits.evaluation import (
    UNetDenoiser,
    load_default_pipeline,
    mean_and_ci,
    per_sample_rmse,
    reference_sigmas,
    sliced_wasserstein,
    solve,
    start_noise,
)
from diffusers_gits.schedules import baseline_schedules
from diffusers_gits.search import dp_schedules


SOLVERS = ("dpmpp_2m", "unipc", "ipndm", "euler")
NFES = (4, 5, 6, 8, 10)
#: The GITS variants calibrated. "gits_auto" is the package default (`from_calibration` with no options); its schedule
#: before refinement is reported too, as "gits_auto_norefine" (the held-out choice alone).
VARIANTS = {
    "gits_paper": {"coeff": 1.2, "refine": False, "num_holdout": 0},
    "gits_auto": {},
}


def calibrate_variants(pipe, solver, num_warmup, log):
    schedules, costs = {}, {}
    for name, options in VARIANTS.items():
        tic = time.perf_counter()
        scheduler = GITSScheduler.from_calibration(
            pipe,
            list(NFES),
            num_warmup=num_warmup,
            batch_size=64,
            solver=solver,
            progress=False,
            cache=False,
            **options,
        )
        meta = scheduler.config.calibration
        costs[name] = {
            "wall_s": time.perf_counter() - tic,
            **meta["timings"],
            **{f"calls_{k}": v for k, v in meta["model_calls"].items()},
            "chosen": {k: v["chosen"] for k, v in meta["report"].items()},
        }
        schedules[name] = {k: scheduler.schedule_for(k) for k in NFES}
        if name == "gits_auto":
            schedules["gits_auto_norefine"] = {
                k: np.array(meta["report"][str(k)]["chosen_sigmas_before_refine"]) for k in NFES
            }
        log(f"  calibrated {name} for {solver} in {costs[name]['wall_s']:.1f} s: {costs[name]['chosen']}")
    return schedules, costs


def score_schedules(candidates_for, solve, reference: torch.Tensor, real: torch.Tensor) -> dict:
    """`{name: {N: rmse, ci, swd, sigmas}}` for every schedule `candidates_for(N)` gives, sampled by `solve(sigmas)`."""
    table = {}
    for k in NFES:
        for name, sigmas in candidates_for(k).items():
            out = solve(sigmas)
            rmse, ci = mean_and_ci(per_sample_rmse(out, reference))
            table.setdefault(name, {})[k] = {
                "rmse": rmse,
                "ci": ci,
                "swd": sliced_wasserstein(out, real),
                "sigmas": [round(float(s), 5) for s in sigmas],
            }
    return table


def step_overhead(
    stock_class=EulerDiscreteScheduler, gits_class=GITSScheduler, config: dict | None = None, repeats: int = 200
) -> dict[str, float]:
    """Per-step time of a GITS scheduler (each solver) over a stock scheduler's, on an SD-sized latent, both on the
    stock scheduler's 10-step schedule."""
    if config is None:
        config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    sample = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    output = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    scales_input = hasattr(stock_class, "scale_model_input")  # VP pipelines call it; flow pipelines do not

    def per_step(scheduler):
        times = []
        for _ in range(repeats // 10):
            scheduler.set_timesteps(10)
            x = sample.clone()
            tic = time.perf_counter()
            for t in scheduler.timesteps:
                x_in = scheduler.scale_model_input(x, t) if scales_input else x
                x = scheduler.step(output, t, x_in).prev_sample
            times.append((time.perf_counter() - tic) / 10)
        return statistics.median(times)

    stock_scheduler = stock_class(**config)
    stock = per_step(stock_scheduler)
    table = {"10": stock_scheduler.sigmas.tolist()}  # the stock schedule, as a calibrated table
    ratios = {"stock_us": stock * 1e6}
    for solver in SOLVERS:
        ratios[solver] = per_step(gits_class(**config, solver=solver, gits_sigmas=table)) / stock
    return ratios


def dp_timing() -> float:
    cost = np.triu(np.random.default_rng(0).random((102, 102)), 1)
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        dp_schedules(cost, range(1, 21), 1.2)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run for checking the script; writes to /tmp")
    parser.add_argument("--speed-only", action="store_true", help="re-measure only the speed section of results.json")
    args = parser.parse_args()
    if args.speed_only:
        path = Path(__file__).parent / "results.json"
        results = json.loads(path.read_text())
        for solver, table in results["solvers"].items():  # JSON made the NFE keys strings
            results["solvers"][solver] = {name: {int(k): v for k, v in per_k.items()} for name, per_k in table.items()}
        results["step_overhead_vs_euler_discrete"] = step_overhead()
        results["dp_seconds_101_grid_k1_to_20"] = dp_timing()
        path.write_text(json.dumps(results, indent=1))
        (path.parent / "RESULTS.md").write_text(render(results))
        return
    num_test, num_warmup, ref_steps = (64, 64, 100) if args.quick else (512, 256, 500)
    out_dir = Path("/tmp/gits-quick") if args.quick else Path(__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)

    pipe = load_default_pipeline()
    noise = GITSScheduler.from_config(pipe.scheduler.config).noise_schedule
    denoiser = UNetDenoiser(pipe.unet, noise, pipe.scheduler.config.prediction_type)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z = start_noise(num_test, shape, TEST_SEED)
    tic = time.perf_counter()
    reference = solve(denoiser, z, reference_sigmas(noise, ref_steps), "ipndm")
    reference_s = time.perf_counter() - tic
    check = solve(denoiser, z[:64], reference_sigmas(noise, 2 * ref_steps), "ipndm")
    reference_error = float(per_sample_rmse(reference[:64], check).mean())
    real = digits_images("test")
    swd_reference = sliced_wasserstein(reference, real)
    log(
        f"reference: {ref_steps} steps in {reference_s:.1f} s; RMSE to a {2 * ref_steps}-step solve {reference_error:.2e}; SWD to real {swd_reference:.4f}"
    )

    results = {"solvers": {}, "calibration_cost": {}}
    for solver in SOLVERS:
        schedulers, costs = calibrate_variants(pipe, solver, num_warmup, log)
        results["calibration_cost"][solver] = costs
        table = score_schedules(
            lambda k: {**baseline_schedules(noise, k), **{name: per_k[k] for name, per_k in schedulers.items()}},
            lambda sigmas: solve(denoiser, z, sigmas, solver),
            reference,
            real,
        )
        results["solvers"][solver] = table
        log(f"  {solver}: " + ", ".join(f"NFE {k}: gits_auto {table['gits_auto'][k]['rmse']:.4f}" for k in NFES))
        write(results, out_dir, start, num_test, num_warmup, ref_steps, reference_error, swd_reference)
    log(f"wrote {out_dir / 'RESULTS.md'}")


def write(results, out_dir, start, num_test, num_warmup, ref_steps, reference_error, swd_reference) -> None:
    """Write what is measured so far (after every solver: a long run that is stopped still leaves results)."""
    results["step_overhead_vs_euler_discrete"] = results.get("step_overhead_vs_euler_discrete") or step_overhead()
    results["dp_seconds_101_grid_k1_to_20"] = results.get("dp_seconds_101_grid_k1_to_20") or dp_timing()
    results["setup"] = {
        "package_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "num_test": num_test,
        "num_warmup": num_warmup,
        "reference_steps": ref_steps,
        "reference_rmse_to_2x_steps": reference_error,
        "reference_swd_to_real": swd_reference,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "RESULTS.md").write_text(render(results))


def ratio_cells(table: dict, baselines: list[str]) -> list[str]:
    """Per NFE, GITS's (package default) RMSE over the best of `baselines`, naming that baseline."""
    cells = []
    for k in NFES:
        best = min(baselines, key=lambda name: table[name][k]["rmse"])
        cells.append(f"{table['gits_auto'][k]['rmse'] / table[best][k]['rmse']:.2f} (vs {best})")
    return cells


def schedule_table_lines(table: dict, metric: str) -> list[str]:
    """One solver's markdown table: a row per schedule, per NFE its RMSE ± 95% CI (`"rmse"`) or SWD (`"swd"`)."""
    lines = ["| schedule | " + " | ".join(f"NFE {k}" for k in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for name, per_k in table.items():
        if metric == "rmse":
            cells = [f"{per_k[k]['rmse']:.4f} ± {per_k[k]['ci']:.4f}" for k in NFES]
        else:
            cells = [f"{per_k[k]['swd']:.4f}" for k in NFES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict) -> str:
    setup = results["setup"]
    baselines = ["uniform", "karras", "logsnr", "ays_sd15", "gits_sd15_published"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/quality.py` (diffusers-gits {setup['package_version']}, torch {setup['torch']}, "
        f"Python {setup['python']}, {setup['machine']}; {setup['total_s'] / 60:.1f} min). Model: the embedded digits "
        "DDPM (16x16, SD noise schedule, epsilon). "
        f"{setup['num_test']} test noises never used in calibration; calibration on {setup['num_warmup']} warm-up noises "
        "(a quarter held out for choosing). "
        f"Reference: {setup['reference_steps']}-step iPNDM (its RMSE to a solve with twice the steps: "
        f"{setup['reference_rmse_to_2x_steps']:.1e}).",
        "",
        '## Headline: GITS (package default, `coeff="auto"`) vs the best baseline schedule, RMSE ratio',
        "",
        "Ratio < 1 means GITS is closer to the reference. Targets: <= 0.8 at NFE 5 and 6, <= 0.9 at NFE 8 and 10, never > 1.",
        "",
        "| solver | " + " | ".join(f"NFE {k}" for k in NFES) + " |",
        "|---|" + "---|" * len(NFES),
    ]
    for solver, table in results["solvers"].items():
        lines.append(f"| {solver} | " + " | ".join(ratio_cells(table, baselines)) + " |")
    for metric, title in (
        ("rmse", "RMSE to reference (mean ± 95% CI)"),
        (
            "swd",
            f"Sliced Wasserstein distance to held-out real digits (reference solution: {setup['reference_swd_to_real']:.4f})",
        ),
    ):
        lines += ["", f"## {title}", ""]
        for solver, table in results["solvers"].items():
            lines += [f"### {solver}", "", *schedule_table_lines(table, metric), ""]
    lines += [
        "## Calibration cost",
        "",
        "Seconds and model calls per calibration (all five NFEs at once); the teacher is 61 grid steps per warm-up sample.",
        "",
    ]
    lines += [
        "| solver | variant | wall s | teacher s | cost matrix s | DP s | selection s | teacher calls | selection calls | extra over teacher time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for solver, costs in results["calibration_cost"].items():
        for name, c in costs.items():
            extra = (c["cost_s"] + c["dp_s"] + c["selection_s"]) / c["teacher_s"]
            lines.append(
                f"| {solver} | {name} | {c['wall_s']:.1f} | {c['teacher_s']:.1f} | {c['cost_s']:.2f} | {c['dp_s']:.3f} | {c['selection_s']:.1f} | {c['calls_teacher']} | {c['calls_selection']} | {100 * extra:.0f}% |"
            )
    overhead = results["step_overhead_vs_euler_discrete"]
    lines += [
        "",
        "## Speed",
        "",
        f"- DP over a 101-point grid for every K in 1..20: {1000 * results['dp_seconds_101_grid_k1_to_20']:.1f} ms (median of 5).",
        f"- Scheduler step on a 1x4x64x64 latent, as a ratio to `EulerDiscreteScheduler.step` ({overhead['stock_us']:.0f} us) in the same run: "
        + ", ".join(f"{s} {overhead[s]:.2f}x" for s in SOLVERS)
        + ".",
        f"- Peak resident memory of the whole benchmark process: {setup['peak_rss_mib']:.0f} MiB.",
        "",
        "## Variants",
        "",
        "- `gits_paper`: the paper's search alone (Euler-jump L2 cost, coeff 1.2, no held-out choice).",
        "- `gits_auto_norefine`: coeff swept over 0.8-1.5, with the baseline schedules as further candidates, chosen per NFE on held-out warm-up noises (scored against a teacher solve on a grid twice as fine).",
        "- `gits_auto` (the default): the same, then each schedule point moved while the held-out error falls on both halves of the held-out set.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
