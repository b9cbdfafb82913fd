"""The choice stage: the scorer (per-noise squared error to the teacher, each sample made once, every call charged)
and the screening on the search noises."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_gits.calibration.choice import HeldOutScorer
from diffusers_gits.calibration.execution import CallBudget, Executor, process_state
from diffusers_gits.calibration.families import model_family
from diffusers_gits.calibration.recorder import PipelineRunner, check_pipeline_family
from diffusers_gits.solvers import sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture, GaussianMixturePipeline


# clip_sample=False: DDPMScheduler clips x0 to [-1, 1] by default, and the exact mixture lives outside it.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False}


def scorer_for(pool, budget, calls):
    mixture = GaussianMixture.random()
    pipe = GaussianMixturePipeline(mixture, DDPMScheduler(**SD_BETAS))
    original = PipelineRunner.run

    class Counting(PipelineRunner):
        def run(self, scheduler, indices, num_steps, *args, **kwargs):
            calls.append(len(indices) * num_steps)
            return original(self, scheduler, indices, num_steps, *args, **kwargs)

    runner = Counting(pipe, None, seed=0, batch_size=4, pipe_kwargs={})
    family = model_family(check_pipeline_family(pipe), None, False)
    fine, _ = family.fine_grid(9)
    reference = family.scheduler("ipndm", {len(fine) - 1: fine})
    executor = Executor(process_state("cpu"), budget=budget)
    return HeldOutScorer(executor, runner, family, "dpmpp_2m", reference, pool), family, mixture, fine


def test_losses_are_per_noise_squared_error_to_the_teacher_and_each_sample_is_made_once():
    calls, budget = [], CallBudget(10**6)
    scorer, family, mixture, fine = scorer_for(list(range(10, 20)), budget, calls)
    coarse = family.grid(4)
    (first,) = scorer.score([coarse], "race", add_noises=6)
    assert scorer.used == list(range(10, 16)) and first.shape == (6,)
    assert budget.spent == {"teacher": 6 * scorer.fine_steps, "selection": 6 * 4} and sum(calls) == budget.total

    # The same error as sampling the mixture directly from the pipeline's noises.
    noises = torch.cat([torch.randn(1, mixture.dim, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                        for i in range(10, 16)])  # fmt: skip
    start = noises * (1 + float(fine[0]) ** 2) ** 0.5
    teacher = sample(mixture.denoiser, start, fine, "ipndm")
    student = sample(mixture.denoiser, start, coarse, "dpmpp_2m")
    expected = (student - teacher).pow(2).mean(1)
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-6)

    calls.clear()
    again, more = scorer.score([coarse, coarse], "race", add_noises=2)
    assert torch.equal(again[:6], first) and torch.equal(again, more) and again.shape == (8,)
    assert sum(calls) == 2 * scorer.fine_steps + 2 * 4  # two new references, two new samples: nothing redone
    (head,) = scorer.score([family.grid(3)], "race", upto=3)
    assert head.shape == (3,) and budget.spent["selection"] == 6 * 4 + 2 * 4 + 3 * 3


def test_the_teacher_scored_against_itself_has_no_error():
    scorer, family, _, fine = scorer_for(list(range(8)), CallBudget(10**6), [])
    scorer.solver = "ipndm"
    (losses,) = scorer.score([np.asarray(fine)], "race", add_noises=8)
    assert losses.abs().max() == 0


class ScriptedScreen:
    """A screening scorer whose per-noise losses are given per schedule."""

    def __init__(self, losses: dict[tuple, torch.Tensor]):
        self.losses = losses
        self.stages = []

    def score(self, schedules, stage):
        self.stages.append(stage)
        return [self.losses[tuple(sigmas)] for sigmas in schedules]


def test_screening_keeps_the_best_baselines_with_their_losses_and_the_searched_schedules():
    from diffusers_gits.calibration.choice import screened

    schedules = {name: np.array([10.0, value, 0.0]) for name, value in
                 {"gits": 1.0, "uniform": 2.0, "karras": 3.0, "ays": 4.0}.items()}  # fmt: skip
    baselines = {name: schedules[name] for name in ("uniform", "karras", "ays")}
    per_noise = {"gits": [0.04, 0.0], "uniform": [0.05, 0.03], "karras": [0.01, 0.01], "ays": [0.02, 0.01]}
    screen = ScriptedScreen({tuple(schedules[n]): torch.tensor(v, dtype=torch.float64) for n, v in per_noise.items()})
    result = screened(screen, {2: {"gits": schedules["gits"]}}, {2: baselines}, keep=2)[2]
    assert screen.stages == ["screening"]  # one batch of calls for everything
    assert list(result.baselines) == ["karras", "ays"] and list(result.losses) == ["gits", "karras", "ays"]
    for name in result.losses:
        torch.testing.assert_close(result.losses[name], torch.tensor(per_noise[name], dtype=torch.float64))
    assert result.pooled_rmse == pytest.approx({n: (sum(v) / 2) ** 0.5 for n, v in per_noise.items()})


def test_a_baseline_returned_over_the_search_says_why_in_the_report():

    from diffusers_gits.calibration.choice import Screening, decide
    from diffusers_gits.calibration.selection import PairedRace

    sigmas = {"gits": np.array([10.0, 1.0, 0.0]), "ays": np.array([10.0, 2.0, 0.0])}
    on_search = {
        "gits": torch.full((8,), 0.04, dtype=torch.float64),
        "ays": torch.full((8,), 0.01, dtype=torch.float64),
    }
    screening = Screening({"ays": sigmas["ays"]}, on_search, {"gits": 0.2, "ays": 0.1})  # gits 0.03 above ays there

    def race_on(gits_losses, ays_losses):
        race = PairedRace(["gits", "ays"], {"ays"}, min_noises=16, search_losses=on_search)
        if len(gits_losses):
            race.add({"gits": gits_losses, "ays": ays_losses})
        return decide(race, sigmas, {"gits": sigmas["gits"]}, False, screening)

    chosen, entry = race_on(torch.zeros(0), torch.zeros(0))
    assert entry["chosen"] == "gits" and "unchecked" in entry["summary"]  # no held-out noise: the search stands
    np.testing.assert_array_equal(chosen, sigmas["gits"])

    noisy = torch.rand(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # The search leads on the held-out noises by 0.001 per noise, less than ays led it by on its 8 search noises.
    chosen, entry = race_on(noisy.flip(0) - 0.001, noisy)
    np.testing.assert_array_equal(chosen, sigmas["ays"])
    assert entry["chosen"] == "ays" and not entry["confident"] and entry["default_error"] is None
    ours, theirs = (
        float(torch.cat([on_search["ays"], noisy]).mean()),
        float(torch.cat([on_search["gits"], noisy - 0.001]).mean()),
    )
    assert entry["summary"] == (
        "ays is as good as this budget finds (gits trailed it over 8 search noises and 32 held-out noises together, "
        f"unconfirmed: pooled RMSE ays {ours**0.5:.4g} vs gits {theirs**0.5:.4g})"
    )
    assert entry["gits_error"] == pytest.approx(float(noisy.mean()) ** 0.5)
    assert entry["gits_mean_rmse"] == pytest.approx(float(noisy.sqrt().mean()))
    assert entry["search_noise_pooled_rmse"] == {"gits": 0.2, "ays": 0.1}

    chosen, entry = race_on(noisy.flip(0) - 0.01, noisy)  # the search leads here by more than ays did on 8 noises
    assert entry["chosen"] == "gits"
    assert entry["summary"].startswith("gits leads over 8 search noises and 32 held-out noises together, unconfirmed")


def test_closest_baseline_names_the_best_baseline_and_the_ratio_on_shared_noises():
    from diffusers_gits.calibration.choice import closest_baseline
    from diffusers_gits.calibration.selection import PairedRace

    generator = torch.Generator().manual_seed(0)
    base = torch.rand(64, generator=generator, dtype=torch.float64) + 0.5
    race = PairedRace(["gits", "beta", "uniform"], {"beta", "uniform"}, min_noises=1000)  # nothing is eliminated
    race.add({"gits": 0.64 * base[:32], "beta": base[:32], "uniform": 2 * base[:32]})
    race.add({"gits": 0.64 * base[32:], "beta": base[32:], "uniform": 2 * base[32:]})
    closest = closest_baseline(race, "gits")
    assert closest["name"] == "beta" and closest["noises"] == 64
    assert closest["ratio"] == pytest.approx(0.8) and closest["pooled_rmse"] == pytest.approx(
        float(base.mean()) ** 0.5
    )
    # A baseline that was chosen is its own closest baseline.
    assert closest_baseline(race, "uniform") == {
        "name": "uniform", "pooled_rmse": pytest.approx(float(2 * base.mean()) ** 0.5), "ratio": 1.0, "noises": 64,
        "on": "held-out noises",
    }  # fmt: skip
    assert closest_baseline(PairedRace(["gits"], set()), "gits") is None


def test_an_unchecked_coeff_sweep_keeps_the_published_coeff_not_the_first_name():
    from diffusers_gits.calibration.choice import decide
    from diffusers_gits.calibration.selection import PairedRace

    searched = {f"gits_coeff_{c:g}": np.array([14.6, c, 0.0]) for c in (0.8, 1.1, 1.2, 1.5)}
    race = PairedRace(list(searched) + ["karras"], {"karras"})  # no held-out noise was affordable
    sigmas, entry = decide(race, {**searched, "karras": np.array([14.6, 1.0, 0.0])}, searched, False)
    assert entry["chosen"] == "gits_coeff_1.2" and entry["coeff"] == 1.2 and entry["confident"] is None
    assert "unchecked" in entry["summary"] and sigmas[1] == 1.2


def test_without_a_race_the_closest_baseline_comes_from_the_screening_and_says_so():
    from diffusers_gits.calibration.choice import Screening, decide
    from diffusers_gits.calibration.selection import PairedRace

    searched = {"gits": np.array([1.0, 0.5, 0.0])}
    screening = Screening(
        baselines={}, losses={},
        pooled_rmse={"gits": 0.3, "beta": 0.4, "uniform": 0.5, "tors": 0.45},
    )  # fmt: skip
    race = PairedRace(["gits", "beta"], {"beta"})  # no held-out noise was affordable
    _, entry = decide(race, {**searched, "beta": np.array([1.0, 0.6, 0.0])}, searched, False, screening)
    assert entry["held_out_noises"] == 0 and "unchecked" in entry["summary"]
    assert entry["closest_baseline"] == {
        "name": "beta", "pooled_rmse": 0.4, "ratio": pytest.approx(0.75), "noises": None, "on": "search noises"
    }  # fmt: skip


def test_the_default_is_scored_on_the_race_noises_only_where_the_budget_allows():
    from types import SimpleNamespace

    from diffusers_gits.calibration.choice import default_error

    scored = []
    scorer = SimpleNamespace(
        cost=lambda schedule, count: count * (len(schedule) - 1),
        remaining=12,
        score=lambda schedules, stage, upto: scored.append(upto) or [torch.full((upto,), 0.25, dtype=torch.float64)],
    )
    default = np.array([10.0, 1.0, 0.0])
    assert default_error(scorer, default, 6) == pytest.approx(0.5) and scored == [6]  # 12 calls: affordable
    assert default_error(scorer, default, 7) is None and scored == [6]  # 14 calls: not scored at all


def test_a_searched_schedule_chosen_after_another_left_the_race_is_reported_as_leading():
    from diffusers_gits.calibration.choice import decide
    from diffusers_gits.calibration.selection import PairedRace

    searched = {f"gits_coeff_{c:g}": np.array([14.6, c, 0.0]) for c in (0.8, 1.2)}
    race = PairedRace([*searched, "karras"], {"karras"}, min_noises=16)
    spread, wide = (torch.rand(32, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (0, 1))
    race.add({"gits_coeff_0.8": spread[:16] + 1.0, "gits_coeff_1.2": spread[:16] + 2.0, "karras": 4 * wide[:16]})
    assert set(race.alive) == {"gits_coeff_0.8", "karras"}  # 1.2 is out after 16 noises, with a mean of about 2.5
    race.add({"gits_coeff_0.8": spread[16:] + 3.5, "karras": 4 * wide[16:] + 2.0})  # ... that the leader's now exceeds
    assert race.mean("gits_coeff_0.8") > race.mean("gits_coeff_1.2") and set(race.alive) == {
        "gits_coeff_0.8",
        "karras",
    }
    chosen, entry = decide(race, {**searched, "karras": np.array([14.6, 1.0, 0.0])}, searched, False)
    assert entry["chosen"] == "gits_coeff_0.8" and not entry["confident"]
    assert entry["summary"].startswith("gits_coeff_0.8 leads over 32 held-out noises, unconfirmed")


def test_hedge_moves_only_an_unconfirmed_searched_choice_toward_the_best_baseline():
    from diffusers_gits.calibration.choice import Screening, hedge_unconfirmed
    from diffusers_gits.calibration.selection import PairedRace
    from diffusers_gits.noise import SIGMA_PATH

    entrants = {name: np.array([10.0, value, 0.0]) for name, value in {"gits": 1.0, "karras": 4.0, "ays": 9.0}.items()}
    searched = {"gits": entrants["gits"]}
    race = PairedRace(list(entrants), {"karras", "ays"}, min_noises=100)  # nothing eliminated: unconfirmed
    race.add({name: torch.tensor(losses, dtype=torch.float64) for name, losses in
              {"gits": [1.0, 2.0], "karras": [2.0, 2.5], "ays": [3.0, 3.0]}.items()})  # fmt: skip
    lead = {"chosen": "gits", "confident": False, "summary": "gits leads over 2 held-out noises, unconfirmed"}
    sigmas, entry = hedge_unconfirmed(entrants["gits"], lead, race, entrants, searched, None, 0.5, SIGMA_PATH)
    # Halfway in log-SNR (-log sigma on the sigma path) from 1 to karras's 4 (the race's best baseline) is their
    # geometric mean, 2.
    np.testing.assert_allclose(sigmas, [10.0, 2.0, 0.0], rtol=1e-12)
    assert entry["chosen"] == "gits_hedged" and lead["chosen"] == "gits"
    assert entry["hedged_toward"] == {"name": "karras", "sigmas": [10.0, 4.0, 0.0], "weight": 0.5}
    assert (
        entry["summary"] == lead["summary"] + "; returned moved 0.5 of the way toward karras in log-SNR (not scored)"
    )

    # A confirmed searched choice and a baseline stay as they are.
    for kept in ({**lead, "confident": True}, {**lead, "chosen": "karras"}):
        sigmas, entry = hedge_unconfirmed(
            entrants[kept["chosen"]], kept, race, entrants, searched, None, 0.5, SIGMA_PATH
        )
        assert entry is kept and sigmas is entrants[kept["chosen"]]

    # No race noise (the budget ran out): toward the screening's best baseline on the search noises; without a
    # screening there is nothing to move toward.
    unchecked = {**lead, "confident": None, "summary": "gits unchecked"}
    empty = PairedRace(list(entrants), {"karras", "ays"})
    screening = Screening(
        baselines={"karras": entrants["karras"], "ays": entrants["ays"]}, losses={},
        pooled_rmse={"gits": 1.0, "karras": 3.0, "ays": 2.0},
    )  # fmt: skip
    sigmas, entry = hedge_unconfirmed(
        entrants["gits"], unchecked, empty, entrants, searched, screening, 0.5, SIGMA_PATH
    )
    np.testing.assert_allclose(sigmas, [10.0, 3.0, 0.0], rtol=1e-12)
    assert entry["hedged_toward"]["name"] == "ays"
    sigmas, entry = hedge_unconfirmed(entrants["gits"], unchecked, empty, entrants, searched, None, 0.5, SIGMA_PATH)
    assert entry is unchecked and sigmas is entrants["gits"]
