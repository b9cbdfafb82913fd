"""Hedging: the searched schedule moved part of the way toward the best baseline; writes RESULTS_HEDGE.md / .json.

    python benchmarks/hedge.py                      # every exact model (about 15 minutes on 2 CPU cores)
    python benchmarks/hedge.py --models flow_1.15   # one model

On the exact models the search's own schedule (`gits_search` in RESULTS_FLOW / RESULTS_KDE / RESULTS_GUIDED, before
the held-out race) loses to the best baseline in cells where a few noises end in another mode, and wins in others.
This scores, on the same test noises, references and baselines as those benchmarks, the schedules between the two:
each interior point at `(1 - a) * baseline + a * searched` in log-SNR, for a = 0 (the best baseline), 0.25, 0.5,
0.75 and 1 (the searched schedule); the ratio is to the best baseline's pooled RMSE. The best baseline is the one
with the lowest pooled RMSE on the test noises (the calibration would pick it on its own noises), so this measures
the blend, not the choice of baseline. Both schedules have N + 1 points from the model's first sigma to 0.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from oracle import COMMITTED, LABELS, committed_run, exact_model, pooled_errors
from quality import NFES, SOLVERS, best_baseline, run_setup

from diffusers_gits.evaluation import TEST_SEED
from diffusers_gits.schedules import log_snr_blend


#: How far each blend moves from the best baseline (0) to the searched schedule (1).
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(COMMITTED), default=tuple(COMMITTED))
    args = parser.parse_args()
    here = Path(__file__).parent
    start = time.perf_counter()
    path = here / "results_hedge.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name in args.models:
        print(f"[{time.perf_counter() - start:7.1f}s] {name}", flush=True)
        results["models"][name] = run(name)
        results["setup"] = run_setup(start, weights=list(WEIGHTS))
        path.write_text(json.dumps(results, indent=1))
        (here / "RESULTS_HEDGE.md").write_text(render(results))


def run(name: str) -> dict:
    """Every solver's and NFE's blends on one model's test noises."""
    committed_file, committed = committed_run(name)
    num_test = committed_file["setup"]["num_test"]
    committed = committed["solvers"]
    model = exact_model(name, [TEST_SEED + i for i in range(num_test)])
    path = model["path"]
    rows = {}
    for solver in SOLVERS:
        table = committed[solver]
        rows[solver] = {}
        for k in NFES:
            best = best_baseline(table, str(k))  # the committed table, keyed by str(N)
            searched = np.asarray(table["gits_search"][str(k)]["sigmas"], dtype=np.float64)
            baseline = np.asarray(table[best][str(k)]["sigmas"], dtype=np.float64)
            blends = [log_snr_blend(baseline, searched, a, path) for a in WEIGHTS]
            errors = pooled_errors(model, solver, blends)
            rows[solver][str(k)] = {"best_baseline": best, "ratios": [(e / errors[0]) ** 0.5 for e in errors]}
    return {"label": LABELS[name], "num_test": num_test, "solvers": rows}


def render(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# Hedging: the searched schedule blended toward the best baseline",
        "",
        f"Written by `python benchmarks/hedge.py` (diffusers-gits {setup['package_version']}, torch {setup['torch']}; "
        f"{setup['total_s'] / 60:.1f} min; see its docstring). Cells: pooled RMSE over the best baseline's at blend "
        "weight a = " + " / ".join(f"{a:g}" for a in WEIGHTS) + " (0: the best baseline, 1: the searched schedule).",
        "",
        "Summary over the 20 cells of each model (four solvers x five NFEs): mean ratio, and cells above 1.03, per a:",
        "",
        "| model | " + " | ".join(f"a = {a:g}" for a in WEIGHTS) + " | best a per cell (hindsight) |",
        "|---|" + "---|" * (len(WEIGHTS) + 1),
    ]
    for model in results["models"].values():
        cells = [row["ratios"] for rows in model["solvers"].values() for row in rows.values()]
        means = [sum(c[i] for c in cells) / len(cells) for i in range(len(WEIGHTS))]
        worse = [sum(c[i] > 1.03 for c in cells) for i in range(len(WEIGHTS))]
        hindsight = sum(min(c) for c in cells) / len(cells)
        lines.append(
            f"| {model['label']} | "
            + " | ".join(f"{m:.3f} ({w})" for m, w in zip(means, worse))
            + f" | {hindsight:.3f} |"
        )
    for model in results["models"].values():
        lines += [
            "",
            f"## {model['label']} ({model['num_test']} test noises)",
            "",
            "| solver | " + " | ".join(f"NFE {k}" for k in NFES) + " |",
            "|---|" + "---|" * len(NFES),
        ]
        for solver, rows in model["solvers"].items():
            cells = ["/".join(f"{r:.2f}" for r in rows[str(k)]["ratios"]) for k in NFES]
            lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
