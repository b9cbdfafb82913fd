"""The choice stage: held-out warm-up noises decide between the searched schedules and the baselines.

Each held-out noise gets a teacher reference (the fine grid, as in the search); schedules are sampled through the
pipeline with the target solver and scored by each sample's mean squared error to the reference, the loss whose mean
is the pooled error users see and the search minimises. The baselines are screened first on the search noises, whose
teacher samples are already paid for; there the searched schedule is scored too. A race (`PairedRace`) adds held-out
noises a round at a time while the ranking is unclear and the budget allows; where it confirms nothing, the pooled
error over the held-out and the search noises together decides (`PairedRace.choice`), and an optional hedge moves a
searched schedule kept that way part of the way toward the best baseline. An optional refinement moves the chosen
schedule's points while both halves of the noises agree that it helps. Every pipeline call goes through
the `Executor`, so the stage is split over processes and resumes from a checkpoint like the others.
"""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..noise import OdePath
from ..schedules import log_snr_blend
from .execution import Executor
from .recorder import PipelineRunner
from .selection import PairedRace


#: Held-out noises added to the race per round (nothing is eliminated before two rounds).
RACE_ROUND = 16
#: The GITS authors' default coeff (Chen et al., ICML 2024).
PUBLISHED_COEFF = 1.2
#: Baselines the student search's race keeps after screening them on the search noises.
SCREENED_BASELINES = 2


class HeldOutScorer:
    """Held-out noises with teacher references (solved on the fine grid as they are needed), and per-noise losses of
    schedules sampled through the pipeline with the target solver: each sample's mean squared error to its reference.

    Squared error, not per-sample RMSE: the mean of these losses is the square of the pooled RMSE, to which the few
    noises that a schedule sends to another mode contribute as users see them; ranked by per-sample RMSE, the typical
    noise would outvote those few (on the exact digits KDE by enough to prefer a schedule with a third more pooled
    error). Per-sample RMSE is the square root of each loss.

    Args:
        executor: runs the pipeline calls and counts them against its budget (references as `"teacher"`, samples as
            `"selection"`).
        runner: the pipeline, its prompts and seeds.
        family: the model family (schedulers of the right class).
        solver: the solver every schedule is sampled with.
        reference_scheduler: the teacher on the fine grid.
        pool: the noise indices available, used in order.
        references: the pool's teacher samples where they are already solved (the search noises): then the whole
            pool is in use from the start.
    """

    def __init__(
        self,
        executor: Executor,
        runner: PipelineRunner,
        family,
        solver: str,
        reference_scheduler,
        pool: list[int],
        references: torch.Tensor | None = None,
    ):
        self.executor = executor
        self.runner = runner
        self.family = family
        self.solver = solver
        self.reference_scheduler = reference_scheduler
        self.pool = pool
        self.used: list[int] = list(pool) if references is not None else []
        self.references: list[torch.Tensor] = [references] if references is not None else []
        self._losses: dict[bytes, torch.Tensor] = {}

    @property
    def remaining(self) -> int:
        """Model calls the budget still allows."""
        return self.executor.budget.remaining

    @property
    def fine_steps(self) -> int:
        return self.reference_scheduler.calibrated_steps[0]

    def score(
        self, schedules: Sequence[np.ndarray], stage: str, add_noises: int = 0, upto: int | None = None
    ) -> list[torch.Tensor]:
        """Per-noise squared error of each schedule on the first `upto` noises in use (default: all), after taking
        `add_noises` more from the pool (fewer at its end) and solving their references. Everything not sampled yet
        runs in one `Executor.map` call."""
        new = self.pool[len(self.used) : len(self.used) + add_noises]
        jobs = self.runner.final_state_jobs("reference", self.reference_scheduler, new, "teacher") if new else []
        num_reference_jobs = len(jobs)
        used = self.used + new
        upto = len(used) if upto is None else upto
        pending = {}
        for sigmas in schedules:
            key = _schedule_key(sigmas)
            done = len(self._losses.get(key, ()))
            if done < upto and key not in pending:
                noises = used[done:upto]
                scheduler = self.family.scheduler(self.solver, {len(sigmas) - 1: sigmas})
                name = f"{self.solver}/{hashlib.sha256(key).hexdigest()[:16]}"
                pending[key] = (sigmas, noises, len(jobs))
                jobs += self.runner.final_state_jobs(name, scheduler, noises, "selection")
        results = self.executor.map(stage, jobs)
        if new:
            self.references.append(torch.cat(results[:num_reference_jobs]))
            self.used = used
        reference = torch.cat(self.references) if self.references else None
        for key, (sigmas, noises, start) in pending.items():
            finals = torch.cat(results[start : start + len(self.runner.batches(noises))])
            done = self._losses.get(key, torch.zeros(0, dtype=torch.float64))
            target = reference[len(done) : len(done) + len(noises)]
            errors = (finals.double() - target.double()).flatten(1).pow(2).mean(1)
            self._losses[key] = torch.cat([done, errors])
        empty = torch.zeros(0, dtype=torch.float64)  # no noise in use yet: nothing to score
        return [self._losses.get(_schedule_key(sigmas), empty)[:upto] for sigmas in schedules]

    def samples(self, sigmas: np.ndarray, noises: list[int]) -> torch.Tensor:
        """Final samples of `sigmas` with the target solver from `noises`, through the pipeline (not scored)."""
        scheduler = self.family.scheduler(self.solver, {len(sigmas) - 1: sigmas})
        name = f"samples/{self.solver}/{hashlib.sha256(_schedule_key(sigmas)).hexdigest()[:16]}"
        return torch.cat(self.executor.map("samples", self.runner.final_state_jobs(name, scheduler, noises)))

    def cost(self, sigmas: np.ndarray, count: int) -> int:
        """Model calls that scoring `sigmas` on `count` more noises takes."""
        return (len(sigmas) - 1) * count


def _schedule_key(sigmas: np.ndarray) -> bytes:
    return np.round(np.asarray(sigmas, dtype=np.float64), 10).tobytes()


@dataclass(frozen=True)
class Screening:
    """What screening on the search noises found for one step count.

    Attributes:
        baselines: the baselines kept for the race.
        losses: per search noise, the loss of the searched schedule and of every baseline kept.
        pooled_rmse: every screened schedule's pooled RMSE on the search noises.
    """

    baselines: dict[str, np.ndarray]
    losses: dict[str, torch.Tensor]
    pooled_rmse: dict[str, float]


def screened(
    screen: HeldOutScorer, searched: dict[int, dict[str, np.ndarray]], baselines: dict[int, dict], keep: int
) -> dict[int, Screening]:
    """Per step count, the `keep` baselines with the lowest error on the screening noises, with their losses and the
    searched schedule's there."""
    requests = [(k, name, sigmas) for k in baselines for name, sigmas in {**searched[k], **baselines[k]}.items()]
    losses = screen.score([sigmas for _, _, sigmas in requests], "screening")
    result = {}
    for k in baselines:
        losses_k = {name: loss for (kk, name, _), loss in zip(requests, losses) if kk == k}
        errors = {name: float(loss.mean()) for name, loss in losses_k.items()}
        kept = sorted(baselines[k], key=errors.get)[:keep]
        result[k] = Screening(
            baselines={b: baselines[k][b] for b in kept},
            losses={name: losses_k[name] for name in [*searched[k], *kept]},
            pooled_rmse={n: e**0.5 for n, e in errors.items()},
        )
    return result


def hedge_unconfirmed(
    sigmas: np.ndarray,
    entry: dict,
    race: PairedRace,
    entrants: dict,
    searched: dict,
    screening: Screening | None,
    weight: float,
    path: OdePath,
) -> tuple[np.ndarray, dict]:
    """Where the choice is a searched schedule that did not beat every baseline with confidence (its lead is a point
    estimate, or no race ran), that schedule moved `weight` of the way toward the best baseline, point by point in
    log-SNR (`log_snr_blend`): the race's best baseline, or the screening's where the race got no noise. A confirmed
    choice, a baseline, or no baseline to move toward leave `sigmas` as they are. No model call: the blend is not
    scored (the entry's errors stay the searched schedule's; `hedged_toward` names the baseline and its sigmas)."""
    if entry["chosen"] not in searched or entry["confident"]:
        return sigmas, entry
    if race.num_noises:
        name = race.best_baseline
        target = entrants[name]
    elif screening is not None and screening.baselines:
        name = min(screening.baselines, key=screening.pooled_rmse.get)
        target = screening.baselines[name]
    else:
        return sigmas, entry
    blend = log_snr_blend(sigmas, target, weight, path)
    entry = {
        **entry,
        "chosen": f"{entry['chosen']}_hedged",
        "hedged_toward": {"name": name, "sigmas": [float(s) for s in target], "weight": weight},
        "summary": f"{entry['summary']}; returned moved {weight:g} of the way toward {name} in log-SNR (not scored)",
    }
    return blend, entry


def run_race(
    scorer: HeldOutScorer, candidates, baselines, steps, confidence, screenings: dict[int, Screening] | None = None
) -> tuple[dict[int, PairedRace], dict]:
    """Race each step count's searched schedules against its baselines, a batch of held-out noises per round,
    until every race is decided or the budget or the held-out noises run out; each race knows its entrants' losses
    on the search noises from `screenings` (`PairedRace`). Returns the races and their entrants' schedules."""
    races, entrants = {}, {}
    # Each look tests again: the confidence is split over the most rounds the budget and the pool could pay for.
    cheapest_round = RACE_ROUND * (scorer.fine_steps + min(steps))
    looks = max(1, min(math.ceil(len(scorer.pool) / RACE_ROUND), scorer.remaining // cheapest_round))
    for k in steps:
        entrants[k] = {**candidates[k], **{name: s for name, s in baselines[k].items() if name not in candidates[k]}}
        races[k] = PairedRace(
            list(entrants[k]), set(baselines[k]), confidence, min_noises=2 * RACE_ROUND, looks=looks,
            search_losses=screenings[k].losses if screenings else None,
        )  # fmt: skip
    while len(scorer.used) < len(scorer.pool):
        open_races = [k for k in steps if not races[k].decided]
        if not open_races:
            break
        count = min(RACE_ROUND, len(scorer.pool) - len(scorer.used))
        round_cost = count * scorer.fine_steps + sum(
            scorer.cost(entrants[k][name], count) for k in open_races for name in races[k].alive
        )
        if round_cost > scorer.remaining:
            break
        requests = [(k, name) for k in open_races for name in races[k].alive]
        losses = scorer.score([entrants[k][name] for k, name in requests], "held-out race", add_noises=count)
        for k in open_races:
            races[k].add({name: loss[-count:] for (kk, name), loss in zip(requests, losses) if kk == k})
    return races, entrants


def decide(
    race: PairedRace,
    entrants: dict,
    searched: dict,
    require_confidence: bool,
    screening: Screening | None = None,
) -> tuple[np.ndarray, dict]:
    """The race's choice and its report entry (its `default_error` for the caller to fill in: `default_error`). A
    race that got no noise (the budget ran out first) leaves the searched schedule in place, unchecked."""
    screened_errors = {"search_noise_pooled_rmse": screening.pooled_rmse} if screening else {}
    if race.num_noises == 0:
        # Unchecked, a coeff sweep falls back to the authors' published coeff (1.2), or the one nearest to it.
        name = min(searched, key=lambda n: abs((coeff_of(n) or PUBLISHED_COEFF) - PUBLISHED_COEFF))  # first on ties
        summary = f"{name} unchecked: the budget left no room for a held-out race (raise budget or num_warmup)"
        return np.asarray(entrants[name], dtype=np.float64), {
            "chosen": name, "coeff": coeff_of(name), "confident": None, "held_out_noises": 0, "summary": summary,
            "closest_baseline": screened_closest_baseline(screening, name, searched), **screened_errors,
        }  # fmt: skip
    chosen, confident = race.choice(require_confidence)
    summary = race.summary(chosen)
    for name, row in summary.items():
        losses = race.losses[name]
        row["pooled_rmse"] = float(losses.mean()) ** 0.5
        row["mean_rmse"] = float(losses.sqrt().mean())
    entry = {
        "chosen": chosen,
        "coeff": coeff_of(chosen),
        "confident": confident,
        "held_out_noises": race.num_noises,
        "gits_error": summary[chosen]["pooled_rmse"],
        "gits_mean_rmse": summary[chosen]["mean_rmse"],
        "default_error": None,
        "closest_baseline": closest_baseline(race, chosen),
        "candidates": summary,
        **screened_errors,
        "searched_sigmas": {name: [float(s) for s in sigmas] for name, sigmas in searched.items()},
    }
    noises = f"{race.num_noises} held-out noises"
    if confident:
        entry["summary"] = f"{chosen} beats every baseline with {race.confidence:.0%} confidence on {noises}"
        return np.asarray(entrants[chosen], dtype=np.float64), entry
    best_searched = min(searched, key=race.mean)
    if chosen not in searched and best_searched in race.eliminated_after:
        entry["summary"] = (
            f"{chosen} is as good as this budget finds ({best_searched} was worse with confidence on {noises})"
        )
        return np.asarray(entrants[chosen], dtype=np.float64), entry
    rival = race.best_baseline if chosen in searched else best_searched
    on_search = race.search_noises(chosen, rival)
    over = f"{on_search} search noises and {noises} together" if on_search else noises
    ours, theirs = race.pooled_mean(chosen, rival) ** 0.5, race.pooled_mean(rival, chosen) ** 0.5
    errors = f"pooled RMSE {chosen} {ours:.4g} vs {rival} {theirs:.4g}"
    if chosen in searched:
        entry["summary"] = f"{chosen} leads over {over}, unconfirmed ({errors})"
    else:
        entry["summary"] = (
            f"{chosen} is as good as this budget finds ({rival} trailed it over {over}, unconfirmed: {errors})"
        )
    return np.asarray(entrants[chosen], dtype=np.float64), entry


def default_error(scorer: HeldOutScorer, default: np.ndarray, num_noises: int) -> float | None:
    """Pooled RMSE of the pipeline's own default schedule on the race's first `num_noises` noises, where the budget
    still allows scoring it (`None` otherwise)."""
    if scorer.cost(default, num_noises) > scorer.remaining:
        return None
    (losses,) = scorer.score([default], "held-out race", upto=num_noises)
    return float(losses.mean()) ** 0.5


def closest_baseline(race: PairedRace, chosen: str) -> dict | None:
    """The baseline with the lowest pooled error in the race (the chosen schedule itself where it is one) and the
    chosen schedule's pooled RMSE as a ratio of that baseline's, on the held-out noises both were scored on: what the
    calibration bought over the best schedule users already run."""
    if not race.baselines:
        return None
    name = chosen if chosen in race.baselines else min(race.baselines, key=race.mean)
    common = min(len(race.losses[name]), len(race.losses[chosen]))
    if common == 0:
        return None
    baseline, ours = race.losses[name][:common].mean(), race.losses[chosen][:common].mean()
    ratio = float((ours / baseline).sqrt()) if baseline > 0 else (1.0 if ours == 0 else math.inf)
    return {
        "name": name,
        "pooled_rmse": float(baseline) ** 0.5,
        "ratio": ratio,
        "noises": common,
        "on": "held-out noises",
    }


def screened_closest_baseline(screening: Screening | None, chosen: str, searched) -> dict | None:
    """`closest_baseline` from the screening on the search noises where no held-out race ran (marked `"on": "search
    noises"`: the noises the searched schedule was fitted to, so its ratio there flatters it)."""
    if screening is None:
        return None
    errors = {name: error for name, error in screening.pooled_rmse.items() if name not in searched}
    if not errors or chosen not in screening.pooled_rmse:
        return None
    name = min(errors, key=errors.get)
    ratio = screening.pooled_rmse[chosen] / errors[name] if errors[name] > 0 else 1.0
    return {"name": name, "pooled_rmse": errors[name], "ratio": ratio, "noises": None, "on": "search noises"}


def refine_schedule(
    scorer, sigmas, entry, family, grid_size, rounds: int = 4, sweeps: int = 2
) -> tuple[np.ndarray, dict]:
    """Coordinate descent on the interior points in the grid's coordinate, by 2, 1, 1/2 and 1/4 grid spacings.

    Each sweep tries moving every point both ways on the race's held-out noises and keeps the better move if it
    lowers the mean error on each half of them, which guards against fitting their noise. A round repeats its sweep
    (up to `sweeps` times) while some point moved. Stops when the budget would be exceeded.
    """
    count = len(scorer.used)
    if count < 2:  # no race ran (the budget ran out first): there are no held-out halves to refine on
        return sigmas, entry
    best = np.asarray(sigmas, dtype=np.float64).copy()
    (best_losses,) = scorer.score([best], "refinement")
    half = count // 2
    t = family.to_coordinate(best[:-1])
    grid_spacing = family.spacing(grid_size)
    for r in range(rounds):
        delta = 2 * grid_spacing / 2**r
        for _ in range(sweeps):
            moved = False
            for i in range(1, len(t)):
                moves = []
                for direction in (-1.0, 1.0):
                    trial_t = t.copy()
                    trial_t[i] += direction * delta
                    # Keep half a move from the neighbours: landing on one would make a zero-length step.
                    lower = trial_t[i + 1] + delta / 2 if i + 1 < len(trial_t) else family.lowest
                    if lower < trial_t[i] < trial_t[i - 1] - delta / 2:
                        moves.append((trial_t, np.append(family.from_coordinate(trial_t), 0.0)))
                if sum(scorer.cost(trial, count) for _, trial in moves) > scorer.remaining:
                    return _refined(best, best_losses, entry, sigmas)
                losses = scorer.score([trial for _, trial in moves], "refinement")
                trials = [(trial_t, trial, loss) for (trial_t, trial), loss in zip(moves, losses)]
                improving = [
                    trial for trial in trials
                    if (best_losses - trial[2])[:half].mean() > 0 and (best_losses - trial[2])[half:].mean() > 0
                ]  # fmt: skip
                if improving:
                    t, best, best_losses = min(improving, key=lambda trial: float(trial[2].mean()))
                    moved = True
            if not moved:
                break
    return _refined(best, best_losses, entry, sigmas)


def _refined(best, best_losses, entry, before) -> tuple[np.ndarray, dict]:
    if np.array_equal(best, before):
        return best, entry
    closest = entry.get("closest_baseline")
    if closest:  # the refined schedule against the same baseline on the same first noises
        ours = float(best_losses[: closest["noises"]].mean())
        closest = {**closest, "ratio": (ours / closest["pooled_rmse"] ** 2) ** 0.5 if closest["pooled_rmse"] else 1.0}
    entry = {
        **entry,
        "closest_baseline": closest,
        "chosen": entry["chosen"] + "+refined",
        "gits_error": float(best_losses.mean()) ** 0.5,
        "gits_mean_rmse": float(best_losses.sqrt().mean()),
        "chosen_sigmas_before_refine": [float(s) for s in before],
    }
    return best, entry


def coeff_of(name: str) -> float | None:
    return float(name.removeprefix("gits_coeff_")) if name.startswith("gits_coeff_") else None
