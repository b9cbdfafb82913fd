"""Headroom: how far below the best baseline any schedule gets on the exact models; writes RESULTS_ORACLE.md / .json.

    python benchmarks/oracle.py                     # every exact model (about 30 minutes on 2 CPU cores)
    python benchmarks/oracle.py --models flow_1.15  # one model
    python benchmarks/oracle.py --quick             # a smaller smoke run, results written under /tmp
    python benchmarks/oracle.py --models t2i_flow --solvers unipc   # the embedded flow text-to-image model, NFE 5-6

The calibration's target is a ratio to the best baseline (goal: at most 0.85 at NFE 5-6). This measures what that
ratio can be at all: for each exact model, solver and NFE, the schedule is fitted directly to the error users see,
pooled squared error to the exact ODE's solution, on 512 *fitting* noises (generator seeds apart from the test noises
and from every calibration's warm-ups), far more than any calibration can afford, then scored on the benchmarks' own
test noises (the same noises, references and baselines as RESULTS_FLOW / RESULTS_KDE / RESULTS_GUIDED). The fit is
coordinate descent on the interior sigmas in log-SNR (`log(signal / sigma)`) by steps of 0.3, 0.1 and 0.03,
started from the two best on the fitting noises of the baselines and the package default's committed schedule (each
descent kept apart, the best on the fitting noises wins). The first sigma and the final 0 are the model's and stay.

The fitted schedule's test ratio is not a strict bound (descent finds a local optimum from three starts), but a
calibration, which sees a few dozen noises through a few thousand model calls, is unlikely to do better: where the
fitted ratio is above 0.85 at NFE 5-6, that goal is out of reach of schedule choice for the solver on that model.

The embedded text-to-image models (`t2i_flow`, `t2i_sd`) have no exact solution and each schedule costs pipeline
calls, so there the same descent (from the two best baselines) is fitted in-sample, to the pooled error to the fine
reference on the very test noises and prompts that `t2i_quality.py` scores (`--nfes`, default 5 and 6; about 15-20
minutes of one CPU thread per solver and NFE): an optimistic figure, so a fitted ratio above 0.85 there says that no
schedule the descent finds reaches the goal even on the noises it is judged on. One results file per model and solver
(`results_oracle_MODEL_SOLVER.json`), so solvers run in parallel processes.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from flow_quality import BANDWIDTH, flow_model
from guided_quality import MODELS as GUIDED_MODELS
from guided_quality import PROMPTS as GUIDED_PROMPTS
from guided_quality import guided_model
from quality import DEFAULT, NFES, SOLVERS, best_baseline, kde_model, run_setup, timed_log
from t2i_quality import gits_versus_best

from diffusers_gits.calibration.execution import Executor, process_state
from diffusers_gits.calibration.recorder import open_pipeline
from diffusers_gits.compare import fresh_noise_scorer, resolve_schedules
from diffusers_gits.demo import BASELINES, TEST_PROMPT_SEED, load_demo_pipeline
from diffusers_gits.evaluation import TEST_SEED
from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH
from diffusers_gits.schedules import baseline_schedules
from diffusers_gits.shapes import prompts_grid
from diffusers_gits.testing.data import digits_images
from diffusers_gits.testing.gaussian_mixture import ClassConditionalMixture, GaussianMixture


#: Fitting noises start here: above the test noises of every benchmark, below compare's fresh noises (2^31).
FIT_SEED = TEST_SEED + 1_000_000
#: Coordinate-descent step sizes in log-SNR, largest first.
STEPS = (0.3, 0.1, 0.03)
#: Sweeps per step size at most (a sweep that moves nothing ends the step size).
SWEEPS = 4
#: Results files the package default's schedule and ratios are read from: model -> (file, keys to its run, the part
#: holding the `"solvers"` tables and the `"calibration_cost"`); `committed_run` reads them.
COMMITTED = {
    "flow_0.5": ("results_flow.json", ("runs", "0.5")),
    "flow_1.15": ("results_flow.json", ("runs", "1.15")),
    "kde_vp": ("results_kde.json", ()),
    "guided_vp": ("results_guided.json", ("runs", "vp")),
    "guided_flow": ("results_guided.json", ("runs", "flow")),
}
LABELS = {
    "flow_0.5": "exact digits KDE as a flow model, Flux's protocol at mu 0.5",
    "flow_1.15": "exact digits KDE as a flow model, Flux's protocol at mu 1.15",
    "kde_vp": "exact digits KDE on SD's noise schedule",
    "guided_vp": "exact class-conditional digits KDE, SD's noise schedule, guidance 5",
    "guided_flow": "exact class-conditional digits KDE, flow at mu 1.15, guidance 3.5",
}
#: The embedded text-to-image models (demo model names), fitted in-sample: on the very test noises and prompts of
#: `t2i_quality.py`, whose results (`results_t2i_MODEL_SOLVER.json`) give the package default's ratio.
T2I = {"t2i_flow": "flow", "t2i_sd": "sd"}
T2I_LABELS = {
    "t2i_flow": "the embedded StableDiffusion3Pipeline, prompts, guidance 5",
    "t2i_sd": "the embedded StableDiffusionPipeline, prompts, guidance 5",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=(*COMMITTED, *T2I), default=tuple(COMMITTED))
    parser.add_argument(
        "--solvers",
        nargs="+",
        choices=SOLVERS,
        help="text-to-image models: these solvers (default: dpmpp_2m unipc euler)",
    )
    parser.add_argument("--nfes", nargs="+", type=int, default=[5, 6], help="text-to-image models: these NFEs")
    parser.add_argument("--quick", action="store_true", help="small run for checking the script; writes to /tmp")
    parser.add_argument("--report", action="store_true", help="write RESULTS_ORACLE.md from results_oracle*.json")
    args = parser.parse_args()
    here = Path(__file__).parent
    if args.report:
        (here / "RESULTS_ORACLE.md").write_text(render(load_results(here)))
        return
    num_fit = 64 if args.quick else 512
    out_dir = Path("/tmp/gits-oracle-quick") if args.quick else here
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = timed_log(start)
    path = out_dir / "results_oracle.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name in args.models:
        log(name)
        if name in T2I:
            # One file per model and solver, so that solvers can run in parallel processes.
            for solver in args.solvers or ("dpmpp_2m", "unipc", "euler"):
                solver_start = time.perf_counter()  # each file's time is its own solver's
                entry = run_t2i(name, solver, args.nfes, 8 if args.quick else None, log)
                entry["setup"] = run_setup(solver_start)
                (out_dir / f"results_oracle_{name}_{solver}.json").write_text(json.dumps(entry, indent=1))
            continue
        results["models"][name] = run(name, num_fit, 64 if args.quick else None, log)
        results["setup"] = run_setup(start, num_fit=num_fit, steps=list(STEPS), sweeps=SWEEPS)
        path.write_text(json.dumps(results, indent=1))
    (out_dir / "RESULTS_ORACLE.md").write_text(render(load_results(out_dir)))
    log(f"wrote {out_dir / 'RESULTS_ORACLE.md'}")


def load_results(folder: Path) -> dict:
    """The exact models' results and every text-to-image model's per-solver files, merged per model."""
    path = folder / "results_oracle.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    results["t2i"] = {}
    for name in T2I:
        files = sorted(folder.glob(f"results_oracle_{name}_*.json"))
        if files:
            entries = [json.loads(file.read_text()) for file in files]
            results["t2i"][name] = {
                "label": entries[0]["label"],
                "num_test": entries[0]["num_test"],
                "solvers": {e["solver"]: e["rows"] for e in entries},
                "total_s": sum(e["setup"]["total_s"] for e in entries),
            }
    return results


def committed_run(name: str, folder: Path = Path(__file__).parent) -> tuple[dict, dict]:
    """The committed results file of the exact model `name` (in `folder`) and its run in that file: the part holding
    its `"solvers"` tables and `"calibration_cost"`."""
    file, keys = COMMITTED[name]
    results = json.loads((folder / file).read_text())
    run = results
    for key in keys:
        run = run[key]
    return results, run


def exact_model(name: str, seeds: list[int]) -> dict:
    """`solve(sigmas, solver)` on the noises of `seeds`, their `reference` and `baselines(N)`, each as the benchmark
    that committed the model's results computes them, and the `pipe` and `call_options` it calibrates with."""
    if name.startswith("flow_"):
        mixture = GaussianMixture.kde(digits_images("train", size=8), BANDWIDTH)
        model = flow_model(mixture, float(name.removeprefix("flow_")), seeds)
        reference = model["solve"](model["fine"](2000), "ipndm")
        return {**model, "reference": reference, "path": FLOW_PATH, "call_options": {}}
    if name == "kde_vp":
        model = kde_model(len(seeds), seeds[0])
        return {
            "pipe": model["pipe"],
            "solve": model["solve"],
            "reference": model["reference_samples"],
            "baselines": lambda k: baseline_schedules(model["noise"], k),
            "path": SIGMA_PATH,
            "call_options": {},
        }
    guidance, mu = GUIDED_MODELS[name.removeprefix("guided_")]
    model = guided_model(ClassConditionalMixture.digits(), guidance, mu, seeds)
    reference = model["solve"](model["fine"](1000), "ipndm")
    return {
        **model,
        "reference": reference,
        "path": SIGMA_PATH if mu is None else FLOW_PATH,
        "call_options": {"prompts": GUIDED_PROMPTS, "guidance_scale": guidance},
    }


def run(name: str, num_fit: int, num_test: int | None, log) -> dict:
    """Fit and score every solver and NFE of one model (`num_test`: the first test noises only; default all the
    committed benchmark scored)."""
    committed_file, committed = committed_run(name)
    num_test = num_test or committed_file["setup"]["num_test"]
    committed = committed["solvers"]
    test = exact_model(name, [TEST_SEED + i for i in range(num_test)])
    fit = exact_model(name, [FIT_SEED + i for i in range(num_fit)])
    results = {"label": LABELS[name], "num_fit": num_fit, "num_test": num_test, "solvers": {}}
    for solver in SOLVERS:
        rows = {}
        for k in NFES:
            table = committed[solver]
            default = np.asarray(table[DEFAULT][str(k)]["sigmas"], dtype=np.float64)
            baselines = fit["baselines"](k)
            fitted, fit_ratio, evaluations = fit_schedule(fit, solver, baselines, default)
            row = score(test, solver, baselines, fitted, default)
            best = best_baseline(table, str(k))  # the committed table, keyed by str(N)
            row.update(
                fit_ratio=fit_ratio,
                evaluations=evaluations,
                committed_default_ratio=table[DEFAULT][str(k)]["pooled"] / table[best][str(k)]["pooled"],
                committed_best_pooled=table[best][str(k)]["pooled"],
            )
            rows[str(k)] = row
            log(
                f"  {solver} NFE {k}: fitted {row['fitted_ratio']:.3f} (on the fitting noises {fit_ratio:.3f}), "
                f"default {row['default_ratio']:.3f}, best baseline {row['best_baseline']} ({evaluations} evaluations)"
            )
        results["solvers"][solver] = rows
    return results


def t2i_model(demo_model: str, num_test: int, solver: str) -> dict:
    """The embedded text-to-image model as `compare_schedules` scores it in `t2i_quality.py`: its first `num_test`
    fresh noises and test prompts, guidance, the teacher on the fine grid; `errors` scores schedules with `solver`
    and `baselines(N)` are the benchmark's baselines for that solver."""
    pipe, guidance = load_demo_pipeline(demo_model)
    prompts = prompts_grid(num_test, TEST_PROMPT_SEED)
    runner, family, mu = open_pipeline(pipe, prompts, 0, 16, {"guidance_scale": guidance}, NFES)
    executor = Executor(process_state(runner.device))
    scorer = fresh_noise_scorer(executor, runner, family, solver, "ipndm", 61, num_test)  # compare's defaults
    scorer.score([], "reference", add_noises=num_test)

    def errors(scored_with: str, schedules: list[np.ndarray]) -> list[float]:
        if scored_with != solver:
            raise ValueError(f"this model scores schedules with {solver!r}, not {scored_with!r}")
        return [float(loss.mean()) for loss in scorer.score(schedules, "oracle")]

    def baselines(k: int) -> dict[str, np.ndarray]:
        resolved = resolve_schedules(BASELINES[demo_model], family, [k], mu, solver)
        return {name: np.asarray(sigmas[k], dtype=np.float64) for name, sigmas in resolved.items()}

    return {"errors": errors, "baselines": baselines, "path": SIGMA_PATH if mu is None else FLOW_PATH}


def run_t2i(name: str, solver: str, nfes: list[int], num_test: int | None, log) -> dict:
    """Fit `solver`'s schedule at each of `nfes` in-sample on the text-to-image benchmark's test noises and prompts:
    the lowest pooled RMSE a schedule reaches on them, over the best baseline's (optimistic, as any in-sample fit)."""
    demo_model = T2I[name]
    committed = json.loads((Path(__file__).parent / f"results_t2i_{demo_model}_{solver}.json").read_text())
    num_test = num_test or committed["num_test"]
    model = t2i_model(demo_model, num_test, solver)
    rows = {}
    for k in nfes:
        baselines = model["baselines"](k)
        fitted, fit_ratio, evaluations = fit_schedule(model, solver, baselines, None)
        errors = dict(zip(baselines, pooled_errors(model, solver, list(baselines.values()))))
        best = min(errors, key=errors.get)
        committed_best, default_ratio, _, _ = gits_versus_best(committed["rmse"], str(k))
        rows[str(k)] = {
            "best_baseline": best,
            "best_pooled": errors[best] ** 0.5,
            "fitted_pooled": fit_ratio * errors[best] ** 0.5,
            "fitted_ratio": fit_ratio,
            "default_ratio": default_ratio,
            "fitted_sigmas": [round(float(s), 6) for s in fitted],
            "evaluations": evaluations,
            "committed_best_baseline": committed_best,
            "committed_best_pooled": committed["rmse"][committed_best][str(k)]["pooled_rmse"],
        }
        log(
            f"  {solver} NFE {k}: fitted {fit_ratio:.3f}, default {default_ratio:.3f}, best baseline {best} "
            f"{errors[best] ** 0.5:.4f} (committed {committed_best} {rows[str(k)]['committed_best_pooled']:.4f}; "
            f"{evaluations} evaluations)"
        )
    return {"label": T2I_LABELS[name], "solver": solver, "num_test": num_test, "rows": rows}


def noise_losses(model: dict, solver: str, sigmas) -> torch.Tensor:
    """Per noise of an exact model, the mean squared error of `sigmas`' sample to the reference (their mean: the pooled
    MSE)."""
    samples = model["solve"](np.asarray(sigmas, dtype=np.float64), solver).double()
    return (samples - model["reference"].double()).flatten(1).pow(2).mean(1)


def pooled_errors(model: dict, solver: str, schedules: list[np.ndarray]) -> list[float]:
    """Pooled mean squared error of each schedule's samples to the model's reference (`model["errors"]` where the
    model scores a batch of schedules itself)."""
    if "errors" in model:
        return model["errors"](solver, schedules)
    return [float(noise_losses(model, solver, sigmas).mean()) for sigmas in schedules]


def fit_schedule(
    model: dict, solver: str, baselines: dict, default: np.ndarray | None
) -> tuple[np.ndarray, float, int]:
    """Coordinate descent on the model's noises from the two best of the baselines and `default` there: the best
    schedule found, its pooled RMSE over the best baseline's there, and the schedules evaluated."""
    names = list(baselines)
    errors = pooled_errors(model, solver, [*baselines.values(), *([] if default is None else [default])])
    baseline_error = min(errors[: len(names)])
    ranked = sorted(range(len(names)), key=errors.__getitem__)[:2]
    starts = [baselines[names[i]] for i in ranked]
    if default is not None and errors[-1] < errors[ranked[-1]] and not any(np.allclose(default, s) for s in starts):
        starts[-1] = default
    best_error, best, evaluations = math.inf, None, len(errors)
    for sigmas in starts:
        found, error, count = descend(model, solver, sigmas)
        evaluations += count
        if error < best_error:
            best_error, best = error, found
    return best, (best_error / baseline_error) ** 0.5, evaluations


def descend(model: dict, solver: str, sigmas: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Coordinate descent on the interior sigmas in log-SNR; the first sigma and the final 0 stay."""
    path = model["path"]
    sigmas = np.asarray(sigmas, dtype=np.float64)
    first, last = sigmas[0], sigmas[-1]
    snr = np.array([path.log_snr(float(s)) for s in sigmas[1:-1]])
    top = path.log_snr(float(first))  # -inf at the flow path's sigma 1

    def schedule(values):
        return np.concatenate([[first], path.from_log_snr(values), [last]])

    (error,) = pooled_errors(model, solver, [sigmas])
    evaluations = 1
    for step in STEPS:
        for _ in range(SWEEPS):
            moved = False
            for i in range(len(snr)):
                trials = []
                for direction in (-1.0, 1.0):
                    trial = snr.copy()
                    trial[i] += direction * step
                    above = trial[i - 1] if i > 0 else top
                    below = trial[i + 1] if i + 1 < len(trial) else math.inf
                    if above < trial[i] < below:
                        trials.append(trial)
                trial_errors = pooled_errors(model, solver, [schedule(t) for t in trials])
                evaluations += len(trials)
                for trial, trial_error in zip(trials, trial_errors):
                    if trial_error < error * (1 - 1e-6):
                        snr, error, moved = trial, trial_error, True
            if not moved:
                break
    return schedule(snr), error, evaluations


def score(model: dict, solver: str, baselines: dict, fitted: np.ndarray, default: np.ndarray) -> dict:
    """The fitted schedule, the default and every baseline on the test noises: ratios to the best baseline."""
    names = list(baselines)
    errors = pooled_errors(model, solver, [*baselines.values(), fitted, default])
    baseline_errors = dict(zip(names, errors[: len(names)]))
    best = min(baseline_errors, key=baseline_errors.get)
    return {
        "best_baseline": best,
        "best_pooled": baseline_errors[best] ** 0.5,
        "fitted_pooled": errors[-2] ** 0.5,
        "fitted_ratio": (errors[-2] / baseline_errors[best]) ** 0.5,
        "default_ratio": (errors[-1] / baseline_errors[best]) ** 0.5,
        "fitted_sigmas": [round(float(s), 6) for s in fitted],
    }


def render(results: dict) -> str:
    lines = ["# Headroom: schedules fitted to the test error", ""]
    if results["models"]:
        lines += exact_lines(results)
    if results["t2i"]:
        lines += t2i_lines(results["t2i"])
    return "\n".join(lines) + "\n"


def exact_lines(results: dict) -> list[str]:
    """The exact models: summary first, then a table per model."""
    setup = results["setup"]
    lines = [
        f"Exact models: written by `python benchmarks/oracle.py` (diffusers-gits {setup['package_version']}, torch "
        f"{setup['torch']}, {setup['machine']}; {setup['total_s'] / 60:.1f} min; see its docstring for the method). "
        "Per solver and NFE: the pooled RMSE of a schedule fitted by coordinate descent on "
        f"{setup['num_fit']} fitting noises to the error to the exact solution, over the best baseline's, on the "
        "benchmark's own test noises (*fitted*), and the package default's committed schedule on the same noises "
        "(*default*). The fitted ratio is about the lowest a schedule reaches for that solver (a local optimum from "
        "three starts, fitted on far more noises than a calibration sees); where it is above 0.85 at NFE 5-6, the "
        "goal of 0.85 there is out of reach of schedule choice.",
        "",
        "## Summary: mean over the five NFEs (NFE 5 / 6), fitted against default",
        "",
        "| model | solver | fitted | default |",
        "|---|---|---|---|",
    ]
    for model in results["models"].values():
        for solver, rows in model["solvers"].items():
            cells = []
            for key in ("fitted_ratio", "default_ratio"):
                mean = sum(rows[str(k)][key] for k in NFES) / len(NFES)
                cells.append(f"{mean:.2f} ({rows['5'][key]:.2f} / {rows['6'][key]:.2f})")
            lines.append(f"| {model['label']} | {solver} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in results["models"].values():
        lines += [
            f"## {model['label']} ({model['num_test']} test noises)",
            "",
            "| solver | " + " | ".join(f"NFE {k} fitted / default" for k in NFES) + " |",
            "|---|" + "---|" * len(NFES),
        ]
        for solver, rows in model["solvers"].items():
            cells = [f"{rows[str(k)]['fitted_ratio']:.2f} / {rows[str(k)]['default_ratio']:.2f}" for k in NFES]
            lines.append(f"| {solver} | " + " | ".join(cells) + " |")
        lines += ["", "Best baseline on the test noises per NFE: " + ", ".join(
            f"{solver} " + "/".join(rows[str(k)]["best_baseline"] for k in NFES)
            for solver, rows in model["solvers"].items()
        ) + ".", ""]  # fmt: skip
    return lines


def t2i_lines(t2i: dict) -> list[str]:
    """The text-to-image models, fitted in-sample: a table per model, a row per solver."""
    minutes = sum(model["total_s"] for model in t2i.values()) / 60
    lines = [
        "## The embedded text-to-image models, fitted in-sample",
        "",
        f"Written by `python benchmarks/oracle.py --models {' '.join(t2i)}` ({minutes:.0f} min in all, one CPU thread "
        "per process). The same coordinate descent from the two best baselines, fitted to the pooled error to "
        "the fine reference on the very test noises and prompts of `t2i_quality.py` (the same reference and "
        "baselines; the best baseline's RMSE reproduces RESULTS_T2I's): *fitted* is the lowest ratio to the best "
        "baseline it found on them, an optimistic figure (fitted in-sample, where a calibration never sees its "
        "test noises); *default* is the package default's ratio in RESULTS_T2I (its schedule is not among the "
        "starts). The descent is local and can stop above the default (the two found different optima); the lower "
        "of the two is the best schedule known on these noises. Where both are above 0.85, no schedule known "
        "reaches the goal of 0.85 at that NFE, even fitted to the noises it is scored on.",
        "",
    ]
    for model in t2i.values():
        nfes = sorted({int(k) for rows in model["solvers"].values() for k in rows})
        lines += [
            f"### {model['label']} ({model['num_test']} test noises and prompts)",
            "",
            "| solver | " + " | ".join(f"NFE {k} fitted / default" for k in nfes) + " | best baseline |",
            "|---|" + "---|" * (len(nfes) + 1),
        ]
        for solver, rows in model["solvers"].items():
            cells = [
                f"{rows[str(k)]['fitted_ratio']:.2f} / {rows[str(k)]['default_ratio']:.2f}" if str(k) in rows else "-"
                for k in nfes
            ]
            best = "/".join(sorted({row["best_baseline"] for row in rows.values()}))
            lines.append(f"| {solver} | " + " | ".join(cells) + f" | {best} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
