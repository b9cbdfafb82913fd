"""Choosing among schedules on held-out noises: a sequential paired race with an honest fallback to the baselines.

Pure statistics on per-noise losses: no pipelines, no model calls. The caller scores every candidate still in the
race on the same new batch of held-out noises, `add`s the losses, and repeats until the race is `decided` or its
budget runs out. Per-noise errors are heavy-tailed on multimodal models (a small schedule change sends one noise to
another mode), so candidates are compared by a confidence interval on their paired per-noise differences, and noises
are added only while the ranking is unclear.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairedDifference:
    """Mean and confidence half-width of `loss(a) - loss(b)` over the noises both were scored on."""

    mean: float
    half_width: float
    count: int


def normal_quantile(confidence: float) -> float:
    """The two-sided normal quantile z with P(|Z| < z) = `confidence`."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return math.sqrt(2) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()


def mean_interval(values: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """The mean of `values` (one per noise) and the half-width of its normal-approximation confidence interval
    (infinite for a single value)."""
    values = values.double().flatten()
    count = len(values)
    spread = float(values.std(unbiased=True)) if count > 1 else math.inf
    return float(values.mean()), normal_quantile(confidence) * spread / count**0.5


def paired_difference(a: torch.Tensor, b: torch.Tensor, confidence: float = 0.95) -> PairedDifference:
    """The normal-approximation confidence interval of the mean of `a - b` (paired, one value per noise)."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired losses must be 1-D and of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    return PairedDifference(*mean_interval(a.double() - b.double(), confidence), len(a))


class PairedRace:
    """A race among schedules scored on the same held-out noises, eliminating the clearly worse as noises arrive.

    After each batch a candidate leaves the race when its mean loss is above the leader's (the lowest mean) with
    confidence, on at least `min_noises` paired noises. The race is decided when one candidate is left, or when a
    searched candidate leads and every baseline has left. Looking after every batch is testing again and again, so
    each look uses the stricter level `1 - (1 - confidence) / looks` (Bonferroni over the looks the caller plans).

    Args:
        candidates: names of the schedules in the race.
        baselines: which of them are baselines (the schedules people use today): the choice falls back to the best
            of these unless a searched schedule beats all of them with confidence.
        confidence (`float`, defaults to 0.95): two-sided confidence of each elimination.
        min_noises (`int`, defaults to 16): noises scored before anything is eliminated.
        looks (`int`, defaults to 1): the most batches the caller will add.
        search_losses (`dict[str, torch.Tensor]`, *optional*): per-noise losses of candidates on the noises the
            searched schedules were fitted to (all scored on the same ones), which `choice` counts with the race's
            own.
    """

    def __init__(
        self,
        candidates: list[str],
        baselines: set[str],
        confidence: float = 0.95,
        min_noises: int = 16,
        looks: int = 1,
        search_losses: dict[str, torch.Tensor] | None = None,
    ):
        if not candidates:
            raise ValueError("a race needs at least one candidate")
        unknown = set(baselines) - set(candidates)
        if unknown:
            raise ValueError(f"baselines {sorted(unknown)} are not among the candidates {candidates}")
        if looks < 1:
            raise ValueError(f"looks must be >= 1, got {looks}")
        search_losses = {
            name: values.detach().double().cpu().flatten() for name, values in (search_losses or {}).items()
        }
        unknown = set(search_losses) - set(candidates)
        if unknown:
            raise ValueError(f"search_losses for {sorted(unknown)}, which are not among the candidates {candidates}")
        if len({len(values) for values in search_losses.values()}) > 1:
            raise ValueError("search_losses must all be on the same noises (one length)")
        normal_quantile(confidence)
        self.baselines = set(baselines)
        self.search_losses = search_losses
        self.confidence = confidence
        self.look_confidence = 1 - (1 - confidence) / looks
        self.min_noises = min_noises
        self.alive = list(candidates)
        self.losses: dict[str, torch.Tensor] = {name: torch.zeros(0, dtype=torch.float64) for name in candidates}
        self.eliminated_after: dict[str, int] = {}

    @property
    def num_noises(self) -> int:
        return len(self.losses[self.alive[0]])

    def mean(self, name: str) -> float:
        return float(self.losses[name].mean()) if len(self.losses[name]) else math.inf

    @property
    def leader(self) -> str:
        return min(self.alive, key=self.mean)

    @property
    def decided(self) -> bool:
        searched_alive = [name for name in self.alive if name not in self.baselines]
        return len(self.alive) == 1 or (len(searched_alive) == len(self.alive) and self.num_noises > 0)

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        """Record one batch of per-noise losses for every candidate still in the race, then eliminate."""
        if set(losses) != set(self.alive):
            raise ValueError(f"expected losses for {sorted(self.alive)}, got {sorted(losses)}")
        sizes = {len(values) for values in losses.values()}
        if len(sizes) != 1:
            raise ValueError(f"every candidate must be scored on the same noises, got batch sizes {sorted(sizes)}")
        for name, values in losses.items():
            self.losses[name] = torch.cat([self.losses[name], values.detach().double().cpu().flatten()])
        if self.num_noises < self.min_noises:
            return
        leader = self.leader
        for name in list(self.alive):
            if name != leader:
                difference = paired_difference(self.losses[name], self.losses[leader], self.look_confidence)
                if difference.mean > difference.half_width:
                    self.alive.remove(name)
                    self.eliminated_after[name] = self.num_noises

    def choice(self, require_confidence: bool = False) -> tuple[str, bool]:
        """The schedule to use and whether it is a searched one that beat every baseline with confidence.

        A searched schedule that beat every baseline with confidence is chosen. Otherwise the best searched schedule
        still in the race (lowest mean loss on the held-out noises) against the best baseline still in it
        (`best_baseline`): the one with the lower mean loss over the search noises and the held-out noises together
        wins (`pooled_mean`). The search noises favour the searched schedule, which was fitted to them: its lead
        there stands where the held-out noises do not contradict it by more, and falls where they show that it does
        not carry over (on the exact flow KDE at 8-10 steps its error there was a fifth to a half of its held-out
        error, a baseline's about the same on both). With `require_confidence`, a searched schedule is chosen only
        when every baseline has left the race; otherwise the best baseline.
        """
        searched = [name for name in self.alive if name not in self.baselines]
        if searched and len(searched) == len(self.alive):
            return min(searched, key=self.mean), True
        baseline = self.best_baseline
        if require_confidence or not searched:
            return baseline, False
        best = min(searched, key=self.mean)
        if self.pooled_mean(best, baseline) < self.pooled_mean(baseline, best):
            return best, False
        return baseline, False

    @property
    def best_baseline(self) -> str:
        """The baseline still in the race with the lowest mean loss over the search noises and the held-out noises
        together."""
        alive = [name for name in self.alive if name in self.baselines]
        return min(alive, key=lambda name: self.pooled_mean(name, *alive))

    def pooled_mean(self, name: str, *others: str) -> float:
        """`name`'s mean loss over the search noises and the held-out noises together, the search noises counted
        only where `name` and all of `others` have losses there (the same noises for every schedule compared)."""
        earlier = (
            self.search_losses[name] if self.search_noises(name, *others) else torch.zeros(0, dtype=torch.float64)
        )
        values = torch.cat([earlier, self.losses[name]])
        return float(values.mean()) if len(values) else math.inf

    def search_noises(self, *names: str) -> int:
        """How many search noises `pooled_mean` counts for `names`."""
        if not names or not all(name in self.search_losses for name in names):
            return 0
        return len(self.search_losses[names[0]])

    def summary(self, chosen: str) -> dict[str, dict]:
        """Per candidate: noises scored, mean loss, and the paired difference to `chosen` (with the half-width of
        its `confidence` interval) on the noises both were scored on."""
        table = {}
        for name, values in self.losses.items():
            entry = {"noises": len(values), "mean_loss": self.mean(name)}
            common = min(len(values), len(self.losses[chosen]))
            if name != chosen and common > 1:
                difference = paired_difference(values[:common], self.losses[chosen][:common], self.confidence)
                entry["loss_minus_chosen"] = difference.mean
                entry["ci_half_width"] = difference.half_width
            table[name] = entry
        return table
