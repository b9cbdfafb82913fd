"""Quality and cost benchmark of GITS on an exact flow-matching model; writes benchmarks/RESULTS_FLOW.md and .json.

    python benchmarks/flow_quality.py            # the full run (a few minutes on 2 CPU cores)
    python benchmarks/flow_quality.py --quick    # a smaller smoke run, results written under /tmp

Model: the Gaussian kernel density estimate (bandwidth 0.25 in [-1, 1] pixel units) of the first 1500 of
scikit-learn's 8x8 digits, whose optimal denoiser is closed form, sampled as a flow-matching model with Flux's
scheduler protocol and dynamic shifting, at mu = 0.5 and at mu = 1.15 (what Flux computes for 256 and 4096 latent
tokens: 512 x 512 and 1024 x 1024 images). Metric 1: RMSE of each N-step
sample to an accurate solution of the same ODE from the same noise, over test noises never used in calibration
(mean and 95% CI). Metric 2: sliced Wasserstein distance to the 297 held-out digits.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from quality import (
    DEFAULT,
    HEDGED_VARIANT,
    NFES,
    SOLVERS,
    VARIANTS,
    benchmark_solvers,
    ratio_cells,
    run_setup,
    runs_hedge_lines,
    schedule_table_lines,
    step_overhead,
    timed_log,
)

from diffusers_gits import GITSFlowMatchScheduler
from diffusers_gits.evaluation import TEST_SEED, per_sample_rmse, sliced_wasserstein
from diffusers_gits.noise import FLOW_PATH, shift_flow_sigmas
from diffusers_gits.schedules import flow_baseline_schedules
from diffusers_gits.solvers import sample
from diffusers_gits.testing.data import digits_images
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, MixtureFlowPipeline


MUS = (0.5, 1.15)
BANDWIDTH = 0.25
BASELINE_LABELS = {
    "uniform": "uniform sigma, no shift",
    "shifted": "uniform sigma with the model's shift (Flux's default)",
    "stock_default": "FlowMatchEulerDiscreteScheduler's own default (SD3's)",
    "oss_flux": "the OSS Flux table, stretched log-linearly to N + 1 and pinned to 0 (as ComfyUI ships it)",
    "beta": 'FlowMatchEuler with `use_beta_sigmas` ("Euler + beta"), as diffusers computes it for the model\'s config and mu',
    "karras": "FlowMatchEuler with `use_karras_sigmas`, likewise",
    "exponential": "FlowMatchEuler with `use_exponential_sigmas`, likewise",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run for checking the script; writes to /tmp")
    args = parser.parse_args()
    num_test, num_warmup, ref_steps = (64, 64, 500) if args.quick else (512, 256, 2000)
    out_dir = Path("/tmp/gits-flow-quick") if args.quick else Path(__file__).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = timed_log(start)
    mixture = GaussianMixture.kde(digits_images("train", size=8), BANDWIDTH)
    real = digits_images("test", size=8).reshape(-1, 64)
    results = {"runs": {}}
    for mu in MUS:
        log(f"mu = {mu}")
        results["runs"][str(mu)] = run(mixture, real, mu, num_test, num_warmup, ref_steps, log)
    results["step_overhead_vs_flowmatch_euler"] = step_overhead(
        FlowMatchEulerDiscreteScheduler, GITSFlowMatchScheduler, {"shift": 3.0}
    )
    results["setup"] = run_setup(
        start, num_test=num_test, num_warmup=num_warmup, bandwidth=BANDWIDTH, reference_steps=ref_steps
    )
    (out_dir / "results_flow.json").write_text(json.dumps(results, indent=1))
    (out_dir / "RESULTS_FLOW.md").write_text(render(results))
    log(f"wrote {out_dir / 'RESULTS_FLOW.md'}")


def run(mixture, real, mu, num_test, num_warmup, ref_steps, log) -> dict:
    """Reference, calibrations and the error table for one shift."""
    model = flow_model(mixture, mu, [TEST_SEED + i for i in range(num_test)])
    reference = model["solve"](model["fine"](ref_steps), "ipndm")
    reference_error = float(per_sample_rmse(reference, model["solve"](model["fine"](2 * ref_steps), "ipndm")).mean())
    swd_reference = sliced_wasserstein(reference, real)
    log(f"reference: {ref_steps} steps, RMSE to {2 * ref_steps} steps {reference_error:.1e}, SWD {swd_reference:.4f}")

    results = {
        "solvers": {},
        "calibration_cost": {},
        "reference_rmse_to_2x_steps": reference_error,
        "reference_swd_to_real": swd_reference,
    }
    results["solvers"], results["calibration_cost"] = benchmark_solvers(
        model["pipe"], model["baselines"], model["solve"], reference, real, num_warmup, log,
        {**VARIANTS, **HEDGED_VARIANT},
    )  # fmt: skip
    return results


def flow_model(mixture, mu: float, seeds: list[int]) -> dict:
    """The exact mixture as a flow model driven like Flux at `mu`, on the noises of generator `seeds`: its pipeline,
    `solve(sigmas, solver)` from those noises, the `fine(steps)` reference grid and the `baselines(N)` as the
    calibration sees them (the pipeline passes Flux's sigmas and `mu`)."""
    pipe = MixtureFlowPipeline(mixture, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), mu=mu)
    factor = float(np.exp(mu))
    sigma_min = GITSFlowMatchScheduler.from_config(pipe.scheduler.config).train_sigma_min
    z = pipe.start_noise([torch.Generator().manual_seed(seed) for seed in seeds])

    def solve(sigmas, solver):
        return sample(mixture.flow_denoiser, z, [float(s) for s in sigmas], solver, path=FLOW_PATH)

    def fine(steps):  # the model's shifted uniform grid, down to 1e-4 before the last step
        return np.append(shift_flow_sigmas(np.linspace(1.0, 1e-4, steps), factor), 0.0)

    def baselines(k):
        return flow_baseline_schedules(k, factor, sigma_min, dict(pipe.scheduler.config), mu, True)

    return {"pipe": pipe, "solve": solve, "fine": fine, "baselines": baselines}


MU_TABLE_HEADER = ["| mu | solver | " + " | ".join(f"NFE {k}" for k in NFES) + " |", "|---|---|" + "---|" * len(NFES)]


def render(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# Flow-matching benchmark results",
        "",
        f"Written by `python benchmarks/flow_quality.py` (diffusers-gits {setup['package_version']}, torch "
        f"{setup['torch']}, Python {setup['python']}, {setup['machine']}; {setup['total_s'] / 60:.1f} min). Model: the "
        f"exact Gaussian KDE (bandwidth {setup['bandwidth']}) of 1500 8x8 digits as a flow-matching model, Flux's "
        "scheduler protocol (it passes `linspace(1, 1/N, N)` and `mu`), dynamic shifting at two values of `mu`. "
        f"{setup['num_test']} test noises never used in calibration; calibration on {setup['num_warmup']} warm-up "
        f"noises with the package defaults. Reference: {setup['reference_steps']}-step iPNDM on the shifted grid. Errors: "
        "pooled RMSE (root of the mean over all coordinates and samples) and the mean of per-sample RMSE.",
        "",
        "Baselines: " + "; ".join(f"`{name}`: {label}" for name, label in BASELINE_LABELS.items()) + ".",
        "",
        "## Headline: the package default vs the best baseline schedule, pooled RMSE ratio",
        "",
        *MU_TABLE_HEADER,
    ]
    for mu, run_results in results["runs"].items():
        for solver, table in run_results["solvers"].items():
            lines.append(f"| {mu} | {solver} | " + " | ".join(ratio_cells(table)) + " |")
    lines += runs_hedge_lines(results, MU_TABLE_HEADER)
    lines += [
        "",
        "The same, as a ratio to Flux's own default (`shifted`: uniform sigma with the model's shift):",
        "",
        *MU_TABLE_HEADER,
    ]
    for mu, run_results in results["runs"].items():
        for solver, table in run_results["solvers"].items():
            cells = [f"{table[DEFAULT][k]['pooled'] / table['shifted'][k]['pooled']:.2f}" for k in NFES]
            lines.append(f"| {mu} | {solver} | " + " | ".join(cells) + " |")
    overhead = results["step_overhead_vs_flowmatch_euler"]
    lines += [
        "",
        "Scheduler step on a 1x4x64x64 latent, as a ratio to `FlowMatchEulerDiscreteScheduler.step` "
        f"({overhead['stock_us']:.0f} us) in the same run: "
        + ", ".join(f"{solver} {overhead[solver]:.2f}x" for solver in SOLVERS)
        + ".",
    ]
    for mu, run_results in results["runs"].items():
        lines += [
            "",
            f"## mu = {mu}",
            "",
            f"Reference RMSE to twice the steps: {run_results['reference_rmse_to_2x_steps']:.1e}; its sliced "
            f"Wasserstein distance to the held-out digits: {run_results['reference_swd_to_real']:.4f}.",
        ]
        for metric, title in (
            ("rmse", "Error to reference: pooled RMSE / mean per-sample RMSE ± 95% CI"),
            ("swd", "Sliced Wasserstein distance"),
        ):
            lines += ["", f"### {title}", ""]
            for solver, table in run_results["solvers"].items():
                lines += [f"#### {solver}", "", *schedule_table_lines(table, metric), ""]
        lines += [
            "### Calibration cost (all five NFEs at once)",
            "",
            "| solver | variant | wall s | teacher calls | search calls | race calls | total calls |",
            "|---|---|---|---|---|---|---|",
        ]
        for solver, costs in run_results["calibration_cost"].items():
            for name, c in costs.items():
                calls = c["model_calls"]
                lines.append(
                    f"| {solver} | {name} | {c['wall_s']:.1f} | {calls.get('teacher', 0)} | {calls.get('search', 0)} | "
                    f"{calls.get('selection', 0)} | {calls['total']} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
