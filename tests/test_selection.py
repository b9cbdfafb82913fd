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


def test_a_tie_keeps_the_race_open_and_the_point_estimate_decides():
    race = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, looks=20)
    for seed in range(20):
        race.add(
            {"gits": noisy_losses(1.0, 8, 2 * seed, spread=1.0), "ays": noisy_losses(1.0, 8, 2 * seed + 1, spread=1.0)}
        )
        if race.decided:
            break
    assert not race.decided and race.num_noises == 160
    assert race.choice() == (race.leader, False)  # unconfirmed either way: the lower pooled error on held-out noises
    assert race.choice(require_confidence=True) == ("ays", False)  # the strict rule falls back to the baseline
    naive = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16)  # 95% at every look
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


def test_an_unconfirmed_leader_is_chosen_whether_searched_or_baseline():
    shared = noisy_losses(1.0, 32, 0, spread=1.0)
    noise = noisy_losses(-0.15, 32, 1, spread=0.3)
    for gits_factor, leader in ((1.01, "ays"), (0.99, "gits")):
        race = PairedRace(["gits", "ays"], baselines={"ays"}, min_noises=16, looks=4)
        race.add({"gits": shared * gits_factor + noise - float(noise.mean()), "ays": shared})  # 1% apart, noisy
        assert race.leader == leader and set(race.alive) == {"gits", "ays"}  # neither confirmed
        assert race.choice() == (leader, False) and race.choice(require_confidence=True) == ("ays", False)


def test_the_search_noises_count_with_the_held_out_noises_where_the_race_confirms_nothing():
    shared = noisy_losses(1.0, 64, 0, spread=1.0)
    entrants, baselines = ["gits", "ays", "karras"], {"ays", "karras"}

    def race(gits_factor, earlier_lead=None):
        on_search = None
        if earlier_lead is not None:  # gits's loss minus each baseline's, per search noise
            on_search = {"gits": earlier_lead + 1, "ays": torch.ones_like(earlier_lead), "karras": earlier_lead + 2}
        result = PairedRace(entrants, baselines, min_noises=16, search_losses=on_search)
        gits = shared * gits_factor + noisy_losses(-0.5, 64, 1, spread=1.0)
        result.add({"gits": gits, "ays": shared, "karras": shared * 1.5})
        assert set(result.alive) == {"gits", "ays"}  # karras is out; gits and ays are 2% apart, unconfirmed
        return result

    assert race(0.98).choice() == ("gits", False) and race(1.02).choice() == ("ays", False)  # held-out noises only
    # The search noises count per noise: on 32 of them a deficit of 0.1 outweighs a 2% lead on 64 held-out noises,
    # 0.02 does not; and a lead of 0.1 there outweighs a 2% deficit on the held-out noises, 0.02 does not.
    for factor, lead, chosen in ((0.98, 0.1, "ays"), (0.98, 0.02, "gits"), (1.02, -0.1, "gits"), (1.02, -0.02, "ays")):
        assert race(factor, torch.full((32,), lead, dtype=torch.float64)).choice() == (chosen, False)
    clear = PairedRace(entrants, baselines, min_noises=16)
    clear.add({"gits": shared * 0.7, "ays": shared, "karras": shared * 1.5})
    assert clear.alive == ["gits"] and clear.choice() == ("gits", True)
    gone = PairedRace(entrants, baselines, min_noises=16)
    gone.add({"gits": shared * 1.5, "ays": shared * 1.4, "karras": shared})  # the searched one is out: the best left
    assert gone.choice() == ("karras", False)


def test_baselines_are_ranked_on_the_search_noises_and_the_held_out_noises_together():
    held_out = noisy_losses(1.0, 32, 0, spread=1.0)
    on_search = {"uniform": torch.full((24,), 0.5, dtype=torch.float64), "shifted": torch.full((24,), 0.7)}
    race = PairedRace(["gits", "uniform", "shifted"], {"uniform", "shifted"}, min_noises=64, search_losses=on_search)
    race.add({"gits": held_out * 1.2, "uniform": held_out * 1.05, "shifted": held_out})  # shifted leads here only
    assert race.leader == "shifted" and race.best_baseline == "uniform"
    assert race.choice() == ("uniform", False)  # the searched one trails both: the better baseline over 56 noises
    without = PairedRace(["gits", "uniform", "shifted"], {"uniform", "shifted"}, min_noises=64)
    without.add({name: race.losses[name] for name in race.alive})
    assert without.choice() == ("shifted", False)


def test_bad_race_settings_are_refused():
    with pytest.raises(ValueError, match="not among the candidates"):
        PairedRace(["gits"], baselines={"ays"})
    with pytest.raises(ValueError, match="confidence"):
        PairedRace(["gits", "ays"], baselines={"ays"}, confidence=1.5)
    with pytest.raises(ValueError, match="at least one"):
        PairedRace([], baselines=set())
    with pytest.raises(ValueError, match=r"search_losses for \['karras'\]"):
        PairedRace(["gits", "ays"], baselines={"ays"}, search_losses={"karras": torch.ones(3)})
    with pytest.raises(ValueError, match="same noises"):
        PairedRace(["gits", "ays"], baselines={"ays"}, search_losses={"gits": torch.ones(3), "ays": torch.ones(2)})
