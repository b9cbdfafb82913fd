"""The benchmark scripts stay runnable: each parses its arguments after importing everything it uses."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH
from diffusers_gits.solvers import sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports_and_shows_its_help(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


def test_every_row_but_the_calibrated_schedules_is_a_baseline(monkeypatch):
    """The published GITS SD1.5 table is a baseline the default must beat, though its name starts like ours."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality

    row = lambda pooled: {k: {"pooled": pooled, "rmse": pooled} for k in quality.NFES}  # noqa: E731
    table = {
        "ays_sd15": row(0.2),
        "gits_sd15_published": row(0.1),
        "gits_default": row(0.12),
        "gits_search": row(0.05),
    }
    assert quality.best_baseline(table, 4) == "gits_sd15_published"
    assert quality.ratio_cells(table)[0] == "1.20 (vs gits_sd15_published)"


@pytest.mark.parametrize("flow", [False, True])
def test_the_headroom_fit_keeps_the_model_s_ends_and_lowers_the_error(monkeypatch, flow):
    """`oracle.descend` moves only the interior sigmas, in log-SNR, and only where the pooled error falls; with no
    step to take it returns the schedule it started from (its log-SNR coordinate round-trips on both paths)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import oracle

    mixture = GaussianMixture.random(dim=4, num_components=3, seed=1)
    path = FLOW_PATH if flow else SIGMA_PATH
    denoiser = mixture.flow_denoiser if flow else mixture.denoiser
    first = 1.0 if flow else 40.0
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (1.0 if flow else first)
    fine = np.append(np.linspace(1.0, 1e-3, 400) if flow else np.geomspace(first, 1e-3, 400), 0.0)
    model = {
        "solve": lambda sigmas, solver: sample(denoiser, z, [float(s) for s in sigmas], solver, path=path),
        "path": path,
    }
    model["reference"] = model["solve"](fine, "ipndm")
    bunched = np.array([first, *(np.linspace(0.9, 0.6, 4) * (1.0 if flow else 0.05)), 0.0])  # all steps late

    monkeypatch.setattr(oracle, "STEPS", ())
    same, error, evaluations = oracle.descend(model, "dpmpp_2m", bunched)
    np.testing.assert_allclose(same, bunched, rtol=1e-12)
    assert evaluations == 1

    # Every schedule the descent tries descends from the model's first sigma: from a second point close below it, a
    # step up in sigma would pass it and is not tried.
    tried, pooled_errors = [], oracle.pooled_errors
    monkeypatch.setattr(
        oracle, "pooled_errors", lambda m, s, schedules: tried.extend(schedules) or pooled_errors(m, s, schedules)
    )
    monkeypatch.setattr(oracle, "STEPS", (0.5,))
    near_top = np.array([first, first * 0.9, *bunched[2:]])
    oracle.descend(model, "dpmpp_2m", near_top)
    assert len(tried) > 1 and all(np.all(np.diff(s) < 0) for s in tried)
    monkeypatch.setattr(oracle, "pooled_errors", pooled_errors)

    monkeypatch.setattr(oracle, "STEPS", (0.5, 0.1))
    fitted, fitted_error, evaluations = oracle.descend(model, "dpmpp_2m", bunched)
    assert fitted[0] == first and fitted[-1] == 0.0 and len(fitted) == len(bunched)
    assert np.all(np.diff(fitted) < 0)
    assert fitted_error < 0.5 * error
    (check,) = oracle.pooled_errors(model, "dpmpp_2m", [fitted])
    assert check == pytest.approx(fitted_error, rel=1e-12)
    assert evaluations > 1


def test_the_headroom_fit_of_a_pipeline_scored_model_starts_from_its_two_best_baselines(monkeypatch):
    """Where the model scores schedules itself (`errors`, as the text-to-image models do through the pipeline) and
    no default schedule is given, `oracle.fit_schedule` descends from the two best baselines only and returns a
    schedule no worse than the best of them, with its ratio to that baseline as the model scores it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import oracle

    mixture = GaussianMixture.random(dim=4, num_components=3, seed=2)
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solve = lambda sigmas: sample(mixture.flow_denoiser, z, [float(s) for s in sigmas], "euler", path=FLOW_PATH)  # noqa: E731
    reference = solve(np.append(np.linspace(1.0, 1e-3, 400), 0.0))

    def errors(solver, schedules):
        return [float((solve(s) - reference).pow(2).mean()) for s in schedules]

    model = {"errors": errors, "path": FLOW_PATH}
    baselines = {
        "uniform": np.linspace(1.0, 0.0, 6),
        "late": np.array([1.0, 0.5, 0.3, 0.2, 0.1, 0.0]),
        "early": np.array([1.0, 0.95, 0.9, 0.85, 0.8, 0.0]),
    }
    first = dict(zip(baselines, errors("euler", list(baselines.values()))))
    worst = max(first, key=first.get)
    monkeypatch.setattr(oracle, "STEPS", (0.3,))
    starts = []
    descend = oracle.descend
    monkeypatch.setattr(oracle, "descend", lambda m, s, sigmas: starts.append(sigmas) or descend(m, s, sigmas))
    fitted, ratio, evaluations = oracle.fit_schedule(model, "euler", baselines, None)
    assert len(starts) == 2 and not any(np.array_equal(s, baselines[worst]) for s in starts)
    assert ratio <= 1.0 and evaluations >= 3
    (error,) = errors("euler", [fitted])
    assert ratio == pytest.approx((error / min(first.values())) ** 0.5, rel=1e-12)


def test_the_race_power_arithmetic_matches_simulated_paired_races(monkeypatch):
    """`race_power.power` reads a committed paired difference (mean, 95% CI on the test noises) into the chance that
    a race on fewer noises ranks the pair the right way round and the noises it needs for 95%: both as simulated
    paired races of normal per-noise differences find them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import race_power

    generator = torch.Generator().manual_seed(0)
    mean, spread, num_test = 2.0, 10.0, 512
    test = mean + spread * torch.randn(num_test, generator=generator, dtype=torch.float64)
    ci = 1.959963984540054 * float(test.std()) / num_test**0.5
    estimated_spread, right, needed = race_power.power(float(test.mean()), ci, num_test, 40)
    assert estimated_spread == pytest.approx(float(test.std()), rel=1e-9)

    def simulated(noises: int) -> float:  # how often a race on `noises` noises ranks the pair right
        races = mean + spread * torch.randn(20_000, noises, generator=generator, dtype=torch.float64)
        return float((races.mean(1) > 0).double().mean())

    _, right_true, needed_true = race_power.power(mean, 1.959963984540054 * spread / num_test**0.5, num_test, 40)
    assert right_true == pytest.approx(simulated(40), abs=0.01)
    assert needed_true == 68  # (1.645 * 10 / 2) ** 2 = 67.6
    assert simulated(needed_true) == pytest.approx(race_power.POWER, abs=0.01)
    assert simulated(needed_true // 3) < race_power.POWER - 0.1
    # From the test noises' estimate: as uncertain as their mean, the truth inside the range its 95% CI spans.
    estimate = float(test.mean())
    fewest, most = (race_power.power(estimate + sign * ci, ci, num_test, 40)[2] for sign in (1, -1))
    assert fewest <= needed_true <= most and fewest <= needed <= most


def test_the_race_power_table_counts_only_cells_worse_beyond_the_ci(monkeypatch):
    """A cell where the calibration returned the test's best baseline is neither flagged nor contested, one within
    the CI is contested only, one beyond it is flagged with its race's noises (held-out plus search)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import race_power
    from quality import NFES

    from diffusers_gits.calibration.settings import student_search_calls

    grid, num_warmup, num_search = 61, 256, 24
    search = num_search * student_search_calls(NFES, grid, 1)
    calls = {"teacher": 56 * 2 * grid, "search": search, "total": 30_000, "teacher_equivalents": 30_000 / (256 * 61)}
    versus = {4: ("uniform", 1e-3, 1e-4), 5: ("uniform", 1e-4, 1e-3), 6: ("uniform", 1e-3, 1e-4)}
    chosen = {4: "gits", 5: "gits", 6: "uniform", 8: "uniform", 10: "uniform"}
    table = {
        "gits_default": {
            str(k): (
                {"pooled": 1.1, "vs_best": dict(zip(("name", "mse_difference", "ci"), versus[k]))}
                if k in versus
                else {}
            )
            for k in NFES
        },
        "uniform": {str(k): {"pooled": 1.0} for k in NFES},
    }
    cost = {
        "model_calls": calls,
        "chosen": {str(k): v for k, v in chosen.items()},
        "held_out_noises": {str(k): 32 for k in NFES},
    }
    run = {
        "solvers": dict.fromkeys(race_power.SOLVERS, table),
        "calibration_cost": {s: {"gits_default": cost} for s in race_power.SOLVERS},
    }
    monkeypatch.setattr(race_power, "ROWS", {"gits_default": "default"})
    contested = {}
    found = race_power.worse_cells("flow_0.5", run, {"num_test": 512, "num_warmup": num_warmup}, contested)
    assert contested == {"default": 2 * len(race_power.SOLVERS)}
    assert [(c["k"], c["race_noises"], c["search"]) for c in found] == [(4, 56, 24)] * len(race_power.SOLVERS)
    assert found[0]["ratio"] == pytest.approx(1.1)
    assert "| 4 | gits | uniform | 1.10 |" in race_power.render(found, contested)


def test_the_budget_table_marks_a_cell_by_its_paired_ci_unless_it_returned_the_best_baseline(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import budget

    generator = torch.Generator().manual_seed(0)
    theirs = torch.rand(512, generator=generator, dtype=torch.float64)
    worse = budget.versus(theirs + 0.1 + 0.01 * torch.randn(512, generator=generator, dtype=torch.float64), theirs)
    assert worse["ratio"] == pytest.approx(((theirs.mean() + 0.1) / theirs.mean()).sqrt().item(), rel=0.01)
    assert worse["mse_difference"] == pytest.approx(0.1, abs=0.003) and 0 < worse["ci"] < 0.01
    tied = budget.versus(theirs + 0.1 * torch.randn(512, generator=generator, dtype=torch.float64), theirs)
    assert budget.mark({**worse, "chosen": "gits", "best": "uniform"}) == "!"
    assert budget.mark({**worse, "chosen": "uniform", "best": "uniform"}) == ""
    assert budget.mark({**tied, "chosen": "gits", "best": "uniform"}) == ""
    better = {**worse, "mse_difference": -worse["mse_difference"]}
    assert budget.mark({**better, "chosen": "gits", "best": "uniform"}) == "+"


def test_a_cost_curve_run_adds_its_sizes_only_to_a_curve_of_the_same_test_noises(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cost_curve

    curve = {"baselines": {"karras": {"4": 0.5}}, "calibrations": {"16": {"n": 16}, "256": {"n": 256}}}
    cost_curve.same_test_noises(curve, {"karras": {"4": 0.5 * (1 + 1e-6)}, "gits": {"4": 0.1}}, "run")
    with pytest.raises(ValueError, match="karras at NFE 4: 0.51 in run"):
        cost_curve.same_test_noises(curve, {"karras": {"4": 0.51}}, "run")
    merged = cost_curve.with_points(curve, {"1024": {"n": 1024}, "32": {"n": 32}})
    assert list(merged["calibrations"]) == ["16", "32", "256", "1024"] and merged["baselines"] == curve["baselines"]
    assert list(curve["calibrations"]) == ["16", "256"]
