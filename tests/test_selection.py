"""The held-out race: paired confidence intervals, early stops on clear winners, ties, and the honest fallback."""

import math

import pytest
import torch

from diffusers_gits.calibration.selection import PairedRace, normal_quantile, paired_difference


def noisy_losses(mean: float, count: int, seed: int, spread: float = 0.1) -> torch.Tensor:
    return mean + spread * torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_paired_difference_matches_the_closed_form():
    a = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    b = torch.tensor([0.5, 1.0, 3.0, 6.5], dtype=torch.float64)
    difference = paired_difference(a, b)
    d = a - b
    assert difference.mean == pytest.approx(float(d.mean()))
    assert difference.half_width == pytest.approx(1.959964 * float(d.std()) / 2, rel=1e-6)
    assert normal_quantile(0.95) == pytest.approx(1.959964, rel=1e-6)
    assert paired_difference(a[:1], b[:1]).half_width == math.inf  # one noise says nothing about spread


def test_a_clear_winner_ends_the_race_after_the_minimum_noises():
    race = PairedRace(["gits", "karras", "uniform"], baselines={"karras", "uniform"}, min_noises=16)
    rounds = 0
    while not race.decided:
        shared = noisy_losses(1.0, 8, seed=rounds)  # per-noise difficulty shared by all schedules: pairing removes it
        race.add(
            {
                name: shared * factor
                for name, factor in {"gits": 0.7, "karras": 1.0, "uniform": 1.5}.items()
                if name in race.alive
            }
        )
        rounds += 1
    assert race.num_noises == 16 and race.alive == ["gits"]
    assert race.choice() == race.choice(require_confidence=True) == ("gits", True)
    summary = race.summary("gits")
    assert summary["karras"]["loss_minus_chosen"] > summary["karras"]["ci_half_width"] > 0


def test_a_tie_keeps_the_race_open_and_falls_back_to_the_best_baseline():
    race = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, looks=20, incumbent="gits")
    for seed in range(20):
        race.add(
            {"gits": noisy_losses(1.0, 8, 2 * seed, spread=1.0), "ays": noisy_losses(1.0, 8, 2 * seed + 1, spread=1.0)}
        )
        if race.decided:
            break
    assert not race.decided and race.num_noises == 160
    assert race.choice() == ("gits", False)  # the searched schedule stays: no baseline beat it, unconfirmed
    assert race.choice(require_confidence=True) == ("ays", False)  # the strict rule falls back to the baseline
    naive = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, incumbent="gits")  # 95% at every look
    for start in range(0, 160, 8):
        naive.add({name: race.losses[name][start : start + 8] for name in naive.alive})
    assert naive.decided  # a tie called a winner: why each look is stricter


def test_a_worse_search_result_is_eliminated_and_the_best_baseline_chosen():
    race = PairedRace(["gits", "ays", "karras"], baselines={"ays", "karras"}, min_noises=8)
    for seed in range(10):
        shared = noisy_losses(1.0, 8, seed)
        race.add({name: shared * {"gits": 2.0, "ays": 1.0, "karras": 1.2}[name] for name in race.alive})
    assert race.alive == ["ays"] and race.choice() == race.choice(require_confidence=True) == ("ays", False)
    assert set(race.eliminated_after) == {"gits", "karras"}


@pytest.mark.parametrize(
    "losses,error",
    [({"gits": torch.ones(4)}, "expected losses"), ({"gits": torch.ones(4), "ays": torch.ones(3)}, "same noises")],
)
def test_bad_batches_are_refused(losses, error):
    race = PairedRace(["gits", "ays"], baselines={"ays"})
    with pytest.raises(ValueError, match=error):
        race.add(losses)


def test_a_baseline_that_leads_without_confidence_does_not_unseat_the_searched_incumbent():
    race = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, looks=4, incumbent="gits")
    shared = noisy_losses(1.0, 32, 0, spread=1.0)
    race.add({"gits": shared * 1.01 + noisy_losses(-0.15, 32, 1, spread=0.3), "ays": shared})  # 1% worse, noisy
    assert race.leader == "ays" and "gits" in race.alive
    assert race.choice() == ("gits", False) and race.choice(require_confidence=True) == ("ays", False)
    leader_rule = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, looks=4)  # no incumbent
    leader_rule.add({name: race.losses[name] for name in race.alive})
    assert leader_rule.choice() == ("ays", False)


def test_a_challenger_replaces_the_incumbent_where_it_leads_over_its_earlier_noises_and_the_race_together():
    shared = noisy_losses(1.0, 64, 0, spread=1.0)
    entrants, baselines = ["gits", "ays", "karras"], {"ays", "karras"}

    def race(gits_factor, earlier_lead=None):
        result = PairedRace(
            entrants, baselines, min_noises=16, incumbent="gits", challenger="ays", challenger_lead=earlier_lead
        )
        gits = shared * gits_factor + noisy_losses(-0.5, 64, 1, spread=1.0)
        result.add({"gits": gits, "ays": shared, "karras": shared * 1.5})
        return result

    behind = race(0.98)
    assert behind.leader == "gits" and set(behind.alive) == {"gits", "ays"}  # karras is out, gits unconfirmed
    assert behind.choice() == ("gits", False)
    ahead = race(1.02)
    assert ahead.leader == "ays" and set(ahead.alive) == {"gits", "ays"}
    assert ahead.choice() == ("ays", False)  # unconfirmed here, but it beat the incumbent on other noises too
    # Its lead on 32 earlier noises counts per noise: a lead of 0.1 there outweighs the 2% deficit on 64, 0.02 not.
    assert race(0.98, torch.full((32,), 0.1, dtype=torch.float64)).choice() == ("ays", False)
    assert race(0.98, torch.full((32,), 0.02, dtype=torch.float64)).choice() == ("gits", False)
    clear = PairedRace(entrants, baselines, min_noises=16, incumbent="gits", challenger="ays")
    clear.add({"gits": shared * 0.7, "ays": shared, "karras": shared * 1.5})
    assert clear.alive == ["gits"] and clear.choice() == ("gits", True)
    gone = PairedRace(entrants, baselines, min_noises=16, incumbent="gits", challenger="ays")
    gone.add({"gits": shared * 1.5, "ays": shared * 1.4, "karras": shared})  # incumbent and challenger out: the leader
    assert gone.choice() == ("karras", False)


def test_bad_race_settings_are_refused():
    with pytest.raises(ValueError, match="not among the candidates"):
        PairedRace(["gits"], baselines={"ays"})
    with pytest.raises(ValueError, match="confidence"):
        PairedRace(["gits", "ays"], baselines={"ays"}, confidence=1.5)
    with pytest.raises(ValueError, match="at least one"):
        PairedRace([], baselines=set())
    with pytest.raises(ValueError, match="incumbent 'sd15' is not among"):
        PairedRace(["gits", "ays"], baselines={"ays"}, incumbent="sd15")
    with pytest.raises(ValueError, match="challenger 'karras' is not among"):
        PairedRace(["gits", "ays"], baselines={"ays"}, incumbent="gits", challenger="karras")
