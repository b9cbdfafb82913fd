"""Never worse, against what it costs: the package default with more warm-ups on the exact models; writes
RESULTS_BUDGET.md / .json.

    python benchmarks/budget.py                              # 512 and 1024 warm-ups, every exact model
    python benchmarks/budget.py --models flow_0.5 --sizes 512
    python benchmarks/budget.py --report                     # rewrite RESULTS_BUDGET.md from results_budget.json

`race_power.py` finds that the cells where the default is worse than the best baseline beyond the test's paired
95% CI are differences its race, on 56-72 noises, cannot resolve: ranking them right takes a median of about 190
noises. This measures what paying for them buys. The calibration is the package default but for `num_warmup` (its
budget stays twice one teacher run over the warm-ups, so 512 warm-ups make 2x and 1024 make 4x the default's calls,
4x and 8x one teacher run over the default's 256 warm-ups, and the held-out race can take up to `num_warmup` minus
the search's noises), on the same models, test noises, references and baselines as RESULTS_FLOW / RESULTS_KDE /
RESULTS_GUIDED; each cell is its pooled-RMSE ratio to the best baseline there, marked ! where it is worse beyond the
paired 95% CI of the test noises, + where better. The default's own row (256 warm-ups) is the committed one.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from oracle import COMMITTED, LABELS, committed_run, exact_model, noise_losses
from quality import DEFAULT, NFES, SOLVERS, best_baseline, calibrate_variants, run_setup, timed_log

from diffusers_gits.calibration.selection import paired_difference
from diffusers_gits.evaluation import TEST_SEED


#: Warm-up counts measured beside the default's 256.
SIZES = (512, 1024)
#: The default's warm-ups: its row is the committed benchmark's.
DEFAULT_SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(COMMITTED), default=tuple(COMMITTED))
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="num_warmup values (default: 512 1024)")
    parser.add_argument("--report", action="store_true", help="only rewrite RESULTS_BUDGET.md from the .json")
    args = parser.parse_args()
    here = Path(__file__).parent
    if args.report:
        (here / "RESULTS_BUDGET.md").write_text(render(json.loads((here / "results_budget.json").read_text())))
        return
    start = time.perf_counter()
    log = timed_log(start)
    path = here / "results_budget.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name in args.models:
        log(name)
        results["models"][name] = run(name, args.sizes, log)
        results["setup"] = run_setup(start)
        path.write_text(json.dumps(results, indent=1))
        (here / "RESULTS_BUDGET.md").write_text(render(results))


def versus(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """Pooled-RMSE ratio of `ours` to `theirs` and their paired per-noise difference (mean and 95% CI)."""
    difference = paired_difference(ours, theirs)
    return {
        "ratio": float(ours.mean() / theirs.mean()) ** 0.5,
        "mse_difference": difference.mean,
        "ci": difference.half_width,
    }


def run(name: str, sizes, log) -> dict:
    """Every solver's calibrations at `sizes` warm-ups on one model, scored against the committed best baselines."""
    results, committed = committed_run(name)
    num_test = results["setup"]["num_test"]
    model = exact_model(name, [TEST_SEED + i for i in range(num_test)])
    result = {"label": LABELS[name], "num_test": num_test, "solvers": {}}
    for solver in SOLVERS:
        table, cost = committed["solvers"][solver], committed["calibration_cost"][solver][DEFAULT]
        best = {k: best_baseline(table, str(k)) for k in NFES}
        baseline_losses = {k: noise_losses(model, solver, model["baselines"](k)[best[k]]) for k in NFES}
        for k in NFES:  # the benchmark's best baseline, recomputed: the same pooled RMSE
            pooled = float(baseline_losses[k].mean()) ** 0.5
            if abs(pooled / table[best[k]][str(k)]["pooled"] - 1) > 1e-6:
                raise RuntimeError(f"{name} {solver} NFE {k}: {best[k]} scores {pooled}, committed differently")
        rows = {
            str(DEFAULT_SIZE): {
                "calls": cost["model_calls"],
                "cells": {
                    str(k): {
                        "ratio": table[DEFAULT][str(k)]["pooled"] / table[best[k]][str(k)]["pooled"],
                        **{f: table[DEFAULT][str(k)]["vs_best"][f] for f in ("mse_difference", "ci")},
                        "best": best[k],
                        "chosen": cost["chosen"][str(k)],
                        "held_out_noises": cost["held_out_noises"][str(k)],
                    }
                    for k in NFES
                },
            }
        }
        for size in sizes:
            schedules, costs = calibrate_variants(
                model["pipe"], solver, size, log, {DEFAULT: {}}, **model["call_options"]
            )
            cells = {}
            for k in NFES:
                cells[str(k)] = {
                    **versus(noise_losses(model, solver, schedules[DEFAULT][k]), baseline_losses[k]),
                    "best": best[k],
                    "chosen": costs[DEFAULT]["chosen"][str(k)],
                    "held_out_noises": costs[DEFAULT]["held_out_noises"][str(k)],
                }
            rows[str(size)] = {
                "calls": costs[DEFAULT]["model_calls"],
                "wall_s": costs[DEFAULT]["wall_s"],
                "cells": cells,
            }
        result["solvers"][solver] = rows
    return result


def mark(cell: dict) -> str:
    """! worse than the best baseline beyond the CI, + better beyond it; none where it returned that baseline."""
    if cell["chosen"] == cell["best"]:
        return ""
    if cell["mse_difference"] > cell["ci"]:
        return "!"
    return "+" if -cell["mse_difference"] > cell["ci"] else ""


def render(results: dict) -> str:
    setup = results["setup"]
    sizes = sorted(
        {int(size) for model in results["models"].values() for rows in model["solvers"].values() for size in rows}
    )
    lines = [
        "# Never worse, against what it costs",
        "",
        f"Written by `python benchmarks/budget.py` (diffusers-gits {setup['package_version']}, torch "
        f"{setup['torch']}, {setup['machine']}; {setup['total_s'] / 60:.1f} min; see its docstring). The package "
        "default at each `num_warmup` (the 256 row: the committed benchmark), on the exact models' 512 test noises; "
        "cells: pooled-RMSE ratio to the best baseline, ! worse beyond the paired 95% CI, + better beyond it, [what "
        "it returned].",
        "",
        "Summary per model and size: mean ratio over the 20 cells / worst / cells worse beyond the CI / better beyond "
        "it; calls: the most over the solvers, and as a multiple of one teacher run over 256 warm-ups.",
        "",
        "| model | " + " | ".join(f"{size} warm-ups" for size in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    totals = {size: [0, 0, 0] for size in sizes}
    for model in results["models"].values():
        row = []
        for size in sizes:
            runs = [rows[str(size)] for rows in model["solvers"].values() if str(size) in rows]
            if not runs:
                row.append("")
                continue
            cells = [cell for run in runs for cell in run["cells"].values()]
            ratios = [cell["ratio"] for cell in cells]
            worse = sum(mark(cell) == "!" for cell in cells)
            better = sum(mark(cell) == "+" for cell in cells)
            calls = max(run["calls"]["total"] for run in runs)
            teacher = max(run["calls"]["total"] / run["calls"]["teacher_equivalents"] for run in runs) * DEFAULT_SIZE
            teacher /= size
            totals[size] = [totals[size][0] + len(cells), totals[size][1] + worse, totals[size][2] + better]
            row.append(
                f"{sum(ratios) / len(ratios):.3f} / {max(ratios):.2f} / {worse} / {better}; "
                f"{calls:,} calls ({calls / teacher:.1f}x)"
            )
        lines.append(f"| {model['label']} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Over every cell measured: "
        + "; ".join(
            f"{size} warm-ups {worse} of {count} worse beyond the CI, {better} better"
            for size, (count, worse, better) in totals.items()
            if count
        )
        + ".",
    ]
    for model in results["models"].values():
        lines += [
            "",
            f"## {model['label']}",
            "",
            "| solver | warm-ups | " + " | ".join(f"NFE {k}" for k in NFES) + " | held-out noises |",
            "|---|---|" + "---|" * (len(NFES) + 1),
        ]
        for solver, rows in model["solvers"].items():
            for size in sorted(rows, key=int):
                cells = rows[size]["cells"]
                held = "/".join(str(cells[str(k)]["held_out_noises"]) for k in NFES)
                lines.append(
                    f"| {solver} | {size} | "
                    + " | ".join(
                        f"{cells[str(k)]['ratio']:.2f}{mark(cells[str(k)])} [{cells[str(k)]['chosen']}]" for k in NFES
                    )
                    + f" | {held} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
