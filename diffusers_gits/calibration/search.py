"""The GITS schedule search: fine grid, jump-cost statistics and the dynamic program (Chen et al., ICML 2024).

Pure math on tensors: no pipelines, files or progress bars. The cost statistics are a sum and a count, added to one
batch at a time (`update`), so memory does not grow with the number of trajectories.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from ..geometry import perpendicular_part
from ..noise import SIGMA_PATH, OdePath, VPNoiseSchedule
from ..solvers import SolverHistory, get_corrector, get_solver


Metric = Literal["l2", "l1", "dev"]
METRICS = get_args(Metric)


def uniform_timestep_grid(noise: VPNoiseSchedule, grid_size: int = 61) -> np.ndarray:
    """The fine grid for discrete VP models: `grid_size` sigmas uniform in timestep from T - 1 down to 0, then 0.

    The final jump to sigma = 0 is part of the grid, so a schedule of K jumps along it costs exactly K model calls.
    This is the authors' `discrete`, rho = 1 grid for Stable Diffusion (their notes, section 2).
    """
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    timesteps = np.linspace(noise.num_train_timesteps - 1, 0, grid_size)
    return np.append(noise.t_to_sigma(timesteps), 0.0)


def _check_trajectory(grid_sigmas: np.ndarray, states: torch.Tensor, denoised: torch.Tensor) -> None:
    """Check that a batch of trajectories fits the P-point grid: P states and P - 1 denoised values."""
    size = len(grid_sigmas)
    if states.shape[0] != size or denoised.shape[0] != size - 1:
        raise ValueError(
            f"expected {size} states and {size - 1} denoised values for a {size}-point grid, "
            f"got {states.shape[0]} and {denoised.shape[0]}"
        )


class JumpCostAccumulator:
    """Running mean over samples of the cost of one Euler jump from grid point i to grid point j > i.

    For teacher states X_i and denoised values D_i along the grid, the jump lands at
    `X_i + (sigma_j - sigma_i) * (X_i - D_i) / sigma_i = D_i + sigma_j * d_i` (the same formula on the sigma and the
    flow path, see `diffusers_gits.noise.OdePath`), and its cost is the distance to the
    teacher state X_j: `l2` (unsquared L2 norm per sample), `l1`, or `dev` (the authors' signed deviation from the
    chord X_0 -> X_end: dev(jump) - dev(X_j)).

    Args:
        grid_sigmas (`np.ndarray`): the fine grid, descending, ending in 0 (length M + 1).
        metric (`str`, defaults to `"l2"`): one of `METRICS`.
    """

    def __init__(self, grid_sigmas: np.ndarray, metric: Metric = "l2"):
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not supported; choose one of {METRICS}")
        self.grid_sigmas = np.asarray(grid_sigmas, dtype=np.float64)
        self.metric = metric
        size = len(self.grid_sigmas)
        self.total = torch.zeros(size, size, dtype=torch.float64)
        self.count = 0

    def _distance(
        self, a: torch.Tensor, b: torch.Tensor, chord: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """Per (jump, sample) cost of landing at `a` when the teacher is at `b`; shapes (J, B, F)."""
        if self.metric == "l2":
            return (a - b).norm(dim=-1)
        if self.metric == "l1":
            return (a - b).abs().sum(dim=-1)
        start, direction = chord
        return self._chord_deviation(a, start, direction) - self._chord_deviation(b, start, direction)

    @staticmethod
    def _chord_deviation(y: torch.Tensor, end: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return perpendicular_part(end - y, direction).norm(dim=-1)

    def update(self, states: torch.Tensor, denoised: torch.Tensor) -> None:
        """Add one batch of teacher trajectories.

        Args:
            states: (M + 1, B, ...) teacher states at every grid point, the last at sigma = 0.
            denoised: (M, B, ...) D(X_i; sigma_i) at every grid point but the last.
        """
        _check_trajectory(self.grid_sigmas, states, denoised)
        size = len(self.grid_sigmas)
        # The statistics live on the CPU: trajectories may come from any device and dtype.
        states = states.detach().flatten(2).to("cpu", torch.float32)
        denoised = denoised.detach().flatten(2).to("cpu", torch.float32)
        sigmas = torch.tensor(self.grid_sigmas, dtype=torch.float32)
        slopes = (states[:-1] - denoised) / sigmas[:-1, None, None]
        chord = None
        if self.metric == "dev":
            end = states[-1]
            chord = (end, (end - states[0]) / (end - states[0]).norm(dim=-1, keepdim=True))
        for j in range(1, size):
            landed = denoised[:j] + float(self.grid_sigmas[j]) * slopes[:j]
            cost = self._distance(landed, states[j].expand_as(landed), chord)
            self.total[:j, j] += cost.sum(dim=1).to(torch.float64)
        self.count += states.shape[1]

    def mean(self) -> np.ndarray:
        """The cost matrix C (upper triangular; C[i, j] for i < j), averaged over all samples seen."""
        if self.count == 0:
            raise ValueError("no trajectories were added")
        return (self.total / self.count).numpy()


class SolverJumpCostAccumulator:
    """Running mean of the L2 cost of one step of the target solver from grid point i to j, after a step from h.

    GITS prices every jump as an Euler step, whatever solver samples later. Here the jump i -> j is the target
    solver's own step from the teacher state X_i, with the teacher's point h < i as its history (h = i = 0 for the
    first jump, which has none), so multistep solvers are priced for what they do between grid points. It uses only
    the recorded teacher trajectories: no extra model calls.

    Every solver step is linear in (X_i, D_i, X_h, D_h), so its coefficients are found once per (h, i, j) by stepping
    basis vectors, and the squared error of all triples comes from each sample's Gram matrix of the trajectory (in
    float64, so small errors do not cancel away).

    Args:
        grid_sigmas (`np.ndarray`): the fine grid, descending, ending in 0 (length P).
        solver (`str`): a solver of `diffusers_gits.solvers.SOLVERS`.
        path (`OdePath`, defaults to `SIGMA_PATH`): the coordinates of the trajectories (`FLOW_PATH` for flow models).
    """

    def __init__(self, grid_sigmas: np.ndarray, solver: str, path: OdePath = SIGMA_PATH):
        self.grid_sigmas = np.asarray(grid_sigmas, dtype=np.float64)
        self.solver = solver
        step = get_solver(solver, path)
        size = len(self.grid_sigmas)
        basis = torch.eye(4, dtype=torch.float64)
        triples, weights = [], []
        for i in range(size - 1):
            for h in [i] if i == 0 else range(i):
                history = SolverHistory()
                if h < i:
                    history = history.push(float(self.grid_sigmas[h]), basis[2], basis[3], order=1)
                for j in range(i + 1, size):
                    landed, _ = step(
                        basis[0], basis[1], float(self.grid_sigmas[i]), float(self.grid_sigmas[j]), history
                    )
                    triples.append((h, i, j))
                    weights.append(landed.tolist() + [-1.0])
        self.triples = torch.tensor(triples, dtype=torch.long)
        h, i, j = self.triples.T
        # Vector indices into [X_0 .. X_{P-1}, D_0 .. D_{P-2}] for X_i, D_i, X_h, D_h, X_j.
        self.indices = torch.stack([i, size + i, h, size + h, j], dim=1)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.total = torch.zeros(size, size, size, dtype=torch.float64)
        self.count = 0

    def update(self, states: torch.Tensor, denoised: torch.Tensor, chunk: int = 8) -> None:
        """Add one batch of teacher trajectories: states (P, B, ...), denoised (P - 1, B, ...)."""
        _check_trajectory(self.grid_sigmas, states, denoised)
        # On the CPU, in float64, whatever the trajectories' device and dtype: (B, 2P - 1, F).
        vectors = torch.cat([states.detach().cpu(), denoised.detach().cpu()]).flatten(2).transpose(0, 1).double()
        sums = torch.zeros(len(self.triples), dtype=torch.float64)
        for start in range(0, vectors.shape[0], chunk):
            gram = vectors[start : start + chunk] @ vectors[start : start + chunk].transpose(1, 2)
            squared = torch.zeros(gram.shape[0], len(self.triples), dtype=torch.float64)
            for u in range(5):
                for v in range(5):
                    squared += (self.weights[:, u] * self.weights[:, v]) * gram[
                        :, self.indices[:, u], self.indices[:, v]
                    ]
            sums += squared.clamp_min(0).sqrt().sum(0)
        h, i, j = self.triples.T
        self.total[h, i, j] += sums
        self.count += states.shape[1]

    def mean(self) -> np.ndarray:
        """Cost tensor C[h, i, j] (inf where no such step exists), averaged over all samples seen."""
        if self.count == 0:
            raise ValueError("no trajectories were added")
        cost = np.full(self.total.shape, np.inf)
        h, i, j = self.triples.T.numpy()
        cost[h, i, j] = (self.total[h, i, j] / self.count).numpy()
        return cost


def dp_schedules(cost: np.ndarray, num_steps: Iterable[int], coeff: float) -> dict[int, list[int]]:
    """Grid indices of the cheapest path from point 0 to the last point in exactly K jumps, for every K requested.

    Minimises `C[i0, i1] + coeff * C[i1, i2] + ... + coeff^(K-1) * C[i_{K-1}, last]` (the authors' weighting: the k-th
    jump from the start carries coeff^(k-1)). One table `V[k][i]` = cheapest k-jump path from i to the end (first jump
    weighted 1) serves every K; argmin pointers are kept for back-tracking.

    Args:
        cost: (P, P) jump costs; only entries with i < j are used.
        num_steps: the step counts K wanted, each in 1..P - 1.
        coeff: the per-jump weight factor (> 0).

    Returns:
        `{K: [0, i1, ..., P - 1]}`, each with K + 1 strictly increasing indices.
    """
    cost = np.asarray(cost, dtype=np.float64)
    size = cost.shape[0]
    num_steps = sorted({int(k) for k in num_steps})
    if not num_steps or num_steps[0] < 1 or num_steps[-1] > size - 1:
        raise ValueError(f"each step count must be in 1..{size - 1} for a {size}-point grid, got {num_steps}")
    if not coeff > 0:
        raise ValueError(f"coeff must be > 0, got {coeff}")
    if cost.ndim == 3:
        return _dp_with_history(cost, num_steps, coeff)
    jumps = np.where(np.triu(np.ones((size, size), dtype=bool), k=1), cost, np.inf)
    max_k = num_steps[-1]
    value = np.full((max_k + 1, size), np.inf)
    pointer = np.zeros((max_k + 1, size), dtype=np.int64)
    value[1] = jumps[:, size - 1]
    pointer[1] = size - 1
    for k in range(2, max_k + 1):
        total = jumps + coeff * value[k - 1][None, :]
        pointer[k] = np.argmin(total, axis=1)
        value[k] = total[np.arange(size), pointer[k]]
    schedules = {}
    for k in num_steps:
        path, i = [0], 0
        for remaining in range(k, 0, -1):
            i = int(pointer[remaining, i])
            path.append(i)
        schedules[k] = path
    return schedules


def _dp_with_history(cost: np.ndarray, num_steps: list[int], coeff: float) -> dict[int, list[int]]:
    """`dp_schedules` for costs C[h, i, j] that depend on the previous point h: the DP state is the pair (h, i)."""
    size = cost.shape[0]
    max_k = num_steps[-1]
    value = np.full((max_k + 1, size, size), np.inf)
    pointer = np.zeros((max_k + 1, size, size), dtype=np.int64)
    value[1] = cost[:, :, size - 1]
    pointer[1] = size - 1
    for k in range(2, max_k + 1):
        total = cost + coeff * value[k - 1][None, :, :]  # total[h, i, j] = C[h, i, j] + coeff * V[k - 1][i, j]
        pointer[k] = np.argmin(total, axis=2)
        value[k] = np.take_along_axis(total, pointer[k][..., None], axis=2)[..., 0]
    schedules = {}
    for k in num_steps:
        path, h, i = [0], 0, 0
        for remaining in range(k, 0, -1):
            h, i = i, int(pointer[remaining, h, i])
            path.append(i)
        schedules[k] = path
    return schedules


LayerEvaluator = Callable[[list[int], list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class StudentPathResult:
    """What `student_path_dp` found.

    Attributes:
        schedules: `{N: [0, i_1, ..., P - 1]}` grid indices of the best N-jump path for every N requested.
        errors: `{N: mean squared error}` of that path's final samples to the targets' last state, per element
            (pooled over the batch and every pixel), on the batch it was searched on.
    """

    schedules: dict[int, list[int]]
    errors: dict[int, float]


@dataclass
class _Arrival:
    """One path of the search into a grid node: its nodes, the batch's states there (as the solver's step left them,
    before any correction) with the solver history, and its rank: the mean squared error to the targets of the state
    the solver will step from (`student_path_dp`); for a path into the last point, of its final samples."""

    path: list[int]
    states: torch.Tensor
    history: SolverHistory
    error: float


def check_arrivals_per_node(arrivals_per_node: int) -> None:
    """Raise `TypeError` / `ValueError` unless `arrivals_per_node` is an int >= 1."""
    if isinstance(arrivals_per_node, bool) or not isinstance(arrivals_per_node, (int, np.integer)):
        raise TypeError(f"arrivals_per_node must be an int, got {arrivals_per_node!r}")
    if arrivals_per_node < 1:
        raise ValueError(f"arrivals_per_node must be >= 1, got {arrivals_per_node}")


def student_path_dp(
    grid_sigmas: np.ndarray,
    targets: torch.Tensor,
    num_steps: Iterable[int],
    solver: str,
    evaluate: LayerEvaluator,
    path: OdePath = SIGMA_PATH,
    arrivals_per_node: int = 1,
    target_denoised: torch.Tensor | None = None,
) -> StudentPathResult:
    """Shortest paths over the fine grid, stepping the target solver from the student's own states.

    GITS prices a jump i -> j from the teacher's state at i, a state the few-step sampler never visits after its first
    big step (measured: the DP alone then loses to the published tables). Here layer k keeps, for every grid node j,
    the `arrivals_per_node` best k-jump paths from the start to j together with the batch's states and solver history
    along each. Layer k + 1 evaluates the denoiser at every kept arrival (one `evaluate` call per rank of arrival),
    which gives each arrival the state the solver really steps from: the same state, or for UniPC the state after its
    corrector, which needs the model output at the arrival. The arrival whose stepping state is closest to the target
    state T[j] continues: the solver steps from it to every j' > j. A jump into the last point (sigma = 0) returns the
    denoised value, so every kept arrival of every node also offers its final sample, and the N-step answer is the
    best of them: its error is the in-batch final error of exactly that schedule. The states along one path are shared
    by the whole batch, as in sampling; the histories of multistep solvers travel with their paths.

    Arrivals are ranked by the mean squared error to T[j] of the state the solver will step from. Before the model call
    at j that state is known for solvers without a corrector; for UniPC it is estimated, at no model call, with the
    teacher's denoised value at j (`target_denoised`) in place of the model's at the arrival (without it, by the
    arrival's own state, which the corrector then moves: measured on an exact flow model, that ranking made the search
    lose to uniform sigmas by up to 1.4x at 8-10 steps). More arrivals per node cost that many times the model calls
    and let the exact corrected state and the final sample decide: up to three jumps the answer is the optimum over
    every path when `arrivals_per_node` is at least the number of grid points.

    Args:
        grid_sigmas: the fine grid, descending, ending in 0 (length P).
        targets: (P, B, ...) reference states at every grid point for the batch (the teacher's, on `path`); the
            first is the common start.
        num_steps: the step counts N wanted, each in 1..P - 1.
        solver: a solver of `diffusers_gits.solvers.SOLVERS`.
        evaluate: `evaluate(nodes, states) -> denoised`: D(states[n]; grid_sigmas[nodes[n]]) for each node, in
            descending sigma order (one pipeline call can visit them all).
        path: the coordinates of `targets` (`FLOW_PATH` for flow models).
        arrivals_per_node: how many paths into each node a layer keeps (>= 1).
        target_denoised: (P - 1, B, ...) the teacher's denoised values at the grid points but the last, for the
            ranking of UniPC's arrivals.

    Returns:
        A `StudentPathResult`.
    """
    grid_sigmas = np.asarray(grid_sigmas, dtype=np.float64)
    size = len(grid_sigmas)
    num_steps = sorted({int(k) for k in num_steps})
    if not num_steps or num_steps[0] < 1 or num_steps[-1] > size - 1:
        raise ValueError(f"each step count must be in 1..{size - 1} for a {size}-point grid, got {num_steps}")
    if targets.shape[0] != size:
        raise ValueError(f"expected {size} target states for a {size}-point grid, got {targets.shape[0]}")
    if target_denoised is not None and target_denoised.shape != (size - 1, *targets.shape[1:]):
        raise ValueError(
            f"target_denoised must have shape {(size - 1, *targets.shape[1:])} (the grid points but the last), "
            f"got {tuple(target_denoised.shape)}"
        )
    check_arrivals_per_node(arrivals_per_node)
    step, correct = get_solver(solver, path), get_corrector(solver, path)
    targets = targets.to(torch.float32)
    if target_denoised is not None:
        target_denoised = target_denoised.to(torch.float32)
    last = size - 1

    def squared_error(states: torch.Tensor, node: int) -> float:
        return float((states - targets[node]).pow(2).mean())

    # node -> its kept arrivals, best first
    layer = {0: [_Arrival([0], targets[0], SolverHistory(), 0.0)]}
    schedules: dict[int, list[int]] = {}
    errors: dict[int, float] = {}
    for k in range(1, num_steps[-1] + 1):
        nodes = sorted(node for node in layer if node != last)
        denoised: dict[int, list[torch.Tensor]] = {node: [] for node in nodes}
        for rank in range(max(len(layer[node]) for node in nodes)):
            ranked = [node for node in nodes if len(layer[node]) > rank]
            values = evaluate(ranked, [layer[node][rank].states for node in ranked])
            for node, d in zip(ranked, values):
                denoised[node].append(d.to(torch.float32))
        best: dict[int, list[_Arrival]] = {}
        for node in nodes:
            sigma = float(grid_sigmas[node])
            offers: dict[int, list[_Arrival]] = {last: []}
            for a, d in zip(layer[node], denoised[node]):
                final, history = step(a.states, d, sigma, 0.0, a.history)
                offers[last].append(_Arrival([*a.path, last], final, history, squared_error(final, last)))
            stepping = [correct(a.states, d, sigma, a.history) for a, d in zip(layer[node], denoised[node])]
            chosen = min(range(len(stepping)), key=lambda r: squared_error(stepping[r], node))
            arrival, d = layer[node][chosen], denoised[node][chosen]
            for j in range(node + 1, last):
                landed, history = step(arrival.states, d, sigma, float(grid_sigmas[j]), arrival.history)
                rank_states = landed
                if target_denoised is not None:
                    rank_states = correct(landed, target_denoised[j], float(grid_sigmas[j]), history)
                offers[j] = [_Arrival([*arrival.path, j], landed, history, squared_error(rank_states, j))]
            for j, entries in offers.items():
                best[j] = sorted(best.get(j, []) + entries, key=lambda a: a.error)[:arrivals_per_node]
        layer = best
        if k in num_steps:
            schedules[k], errors[k] = layer[last][0].path, layer[last][0].error
    return StudentPathResult(schedules=schedules, errors=errors)
