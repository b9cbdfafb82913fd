import itertools

import numpy as np
import pytest
import torch

from diffusers_gits.calibration.search import JumpCostAccumulator, dp_schedules, uniform_timestep_grid
from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH, VPNoiseSchedule, betas_from_config, cumulative_alphas


def path_cost(cost: np.ndarray, path: list[int], coeff: float) -> float:
    """The DP objective of one path of grid indices (for a 3-d cost, the first jump has no history: h = i = 0)."""
    if cost.ndim == 3:
        previous = [0] + path[:-2]
        return float(sum(coeff**k * cost[h, a, b] for k, (h, a, b) in enumerate(zip(previous, path[:-1], path[1:]))))
    return float(sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:]))))


def brute_force(cost, k, coeff):
    size = cost.shape[0]
    best = None
    for interior in itertools.combinations(range(1, size - 1), k - 1):
        path = [0, *interior, size - 1]
        value = path_cost(cost, path, coeff)
        if best is None or value < best[0]:
            best = (value, path)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("coeff", [0.8, 1.0, 1.3])
def test_dp_finds_the_brute_force_optimum(seed, coeff):
    rng = np.random.default_rng(seed)
    size = 9
    cost = np.triu(rng.random((size, size)) * rng.random((size, 1)) * 3, k=1)
    found = dp_schedules(cost, range(1, size), coeff)
    for k in range(1, size):
        value, _ = brute_force(cost, k, coeff)
        path = found[k]
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == size - 1
        assert all(a < b for a, b in zip(path[:-1], path[1:]))
        assert path_cost(cost, path, coeff) == pytest.approx(value, rel=1e-12)


def test_dp_coeff_above_one_moves_steps_towards_the_end():
    size = 31
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cost = np.where(j > i, (j - i) ** 2, 0).astype(float)  # convex, translation invariant: uniform spacing at coeff 1
    uniform = dp_schedules(cost, [6], 1.0)[6]
    late = dp_schedules(cost, [6], 1.5)[6]
    assert np.diff(uniform).max() - np.diff(uniform).min() <= 1
    assert np.diff(late)[-1] < np.diff(late)[0]


def test_dp_rejects_bad_step_counts():
    cost = np.zeros((5, 5))
    with pytest.raises(ValueError, match="1..4"):
        dp_schedules(cost, [5], 1.0)
    with pytest.raises(ValueError, match="1..4"):
        dp_schedules(cost, [], 1.0)
    with pytest.raises(ValueError, match="coeff"):
        dp_schedules(cost, [2], 0.0)


def test_dp_serves_every_step_count_on_a_101_point_grid():
    cost = np.triu(np.random.default_rng(0).random((102, 102)), 1)
    schedules = dp_schedules(cost, range(1, 21), 1.2)
    assert sorted(schedules) == list(range(1, 21))
    assert all(len(path) == k + 1 and path[-1] == 101 for k, path in schedules.items())


def test_uniform_timestep_grid_for_sd():
    noise = VPNoiseSchedule(cumulative_alphas(betas_from_config(1000, 0.00085, 0.012, "scaled_linear")))
    grid = uniform_timestep_grid(noise, 101)
    assert len(grid) == 102 and grid[-1] == 0
    np.testing.assert_allclose(noise.sigma_to_t(grid[:-1]), np.linspace(999, 0, 101), atol=1e-8)
    # The authors' published SD1.5 table lies on this grid (their notes: indices 0, 17, 43, ... for 6 steps).
    np.testing.assert_allclose(
        grid[[0, 17, 43, 66, 85, 97, 100]],
        [14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083, 0.02916753],
        rtol=2e-4,
    )


def random_trajectories(size, batch, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, batch, 2, 3, generator=g), torch.randn(size - 1, batch, 2, 3, generator=g)


@pytest.mark.parametrize("metric", ["l2", "l1", "dev"])
def test_cost_matches_direct_definition(metric):
    grid = np.array([4.0, 2.0, 1.0, 0.5, 0.0])
    states, denoised = random_trajectories(5, 3, 0)
    acc = JumpCostAccumulator(grid, metric)
    acc.update(states, denoised)
    cost = acc.mean()
    x, d = states.flatten(2).double(), denoised.flatten(2).double()
    end, start = x[-1], x[0]
    direction = (end - start) / (end - start).norm(dim=-1, keepdim=True)

    def dev(y):
        offset = end - y
        return (offset - (offset * direction).sum(-1, keepdim=True) * direction).norm(dim=-1)

    for i in range(4):
        for j in range(i + 1, 5):
            jump = x[i] + (grid[j] - grid[i]) * (x[i] - d[i]) / grid[i]
            expected = {
                "l2": (jump - x[j]).norm(dim=-1),
                "l1": (jump - x[j]).abs().sum(-1),
                "dev": dev(jump) - dev(x[j]),
            }[metric]
            assert cost[i, j] == pytest.approx(expected.mean().item(), rel=1e-4, abs=1e-5)
    assert np.all(np.tril(cost) == 0)


def test_accumulator_rejects_wrong_shapes_and_metrics():
    with pytest.raises(ValueError, match="'l3'"):
        JumpCostAccumulator(np.array([1.0, 0.0]), "l3")
    acc = JumpCostAccumulator(np.array([2.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="3 states"):
        acc.update(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="no trajectories"):
        acc.mean()


def brute_force_with_history(cost, k, coeff):
    size = cost.shape[0]
    paths = ([0, *interior, size - 1] for interior in itertools.combinations(range(1, size - 1), k - 1))
    return min(path_cost(cost, path, coeff) for path in paths)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("coeff", [0.9, 1.2])
def test_history_dp_finds_the_brute_force_optimum(seed, coeff):
    rng = np.random.default_rng(seed)
    size = 8
    cost = np.full((size, size, size), np.inf)
    for h in range(size):
        for i in range(h, size):
            for j in range(i + 1, size):
                if h < i or h == i == 0:
                    cost[h, i, j] = rng.random() * (j - i)
    found = dp_schedules(cost, range(1, size), coeff)
    for k in range(1, size):
        path = found[k]
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == size - 1
        assert path_cost(cost, path, coeff) == pytest.approx(brute_force_with_history(cost, k, coeff), rel=1e-12)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "ipndm", "unipc"])
@pytest.mark.parametrize("path", [SIGMA_PATH, FLOW_PATH], ids=lambda path: path.name)
def test_solver_cost_matches_stepping_the_teacher_states(solver, path):
    """Also on the flow path, whose grid starts at pure noise (sigma = 1, log-SNR -inf)."""
    from diffusers_gits.calibration.search import SolverJumpCostAccumulator
    from diffusers_gits.solvers import SolverHistory, get_solver

    grid = np.array([5.0, 2.0, 1.0, 0.4, 0.0]) if path is SIGMA_PATH else np.array([1.0, 0.7, 0.4, 0.1, 0.0])
    states, denoised = random_trajectories(5, 3, 1)
    acc = SolverJumpCostAccumulator(grid, solver, path)
    acc.update(states, denoised)
    cost = acc.mean()
    step = get_solver(solver, path)
    x, d = states.double(), denoised.double()
    for h, i, j in [(0, 0, 1), (0, 0, 4), (0, 1, 3), (1, 2, 4), (0, 3, 4)]:
        history = SolverHistory() if h == i else SolverHistory().push(grid[h], x[h], d[h], order=1)
        landed, _ = step(x[i], d[i], grid[i], grid[j], history)
        expected = (landed - x[j]).flatten(1).norm(dim=1).mean().item()
        assert cost[h, i, j] == pytest.approx(expected, rel=1e-6)
    assert np.isinf(cost[1, 1, 2]) and np.isinf(cost[2, 1, 3])


def test_euler_solver_cost_equals_the_papers_cost():
    from diffusers_gits.calibration.search import SolverJumpCostAccumulator

    grid = np.array([5.0, 2.0, 1.0, 0.4, 0.0])
    states, denoised = random_trajectories(5, 4, 2)
    paper, ours = JumpCostAccumulator(grid), SolverJumpCostAccumulator(grid, "euler")
    paper.update(states, denoised)
    ours.update(states, denoised)
    for h, i, j in [(0, 0, 2), (0, 1, 4), (1, 3, 4)]:
        assert ours.mean()[h, i, j] == pytest.approx(paper.mean()[i, j], rel=1e-5)


def _student_problem(solver: str, size: int = 8, batch: int = 16):
    from diffusers_gits.solvers import sample
    from diffusers_gits.testing.gaussian_mixture import GaussianMixture

    mixture = GaussianMixture.random(num_components=2, seed=1)
    noise = VPNoiseSchedule(cumulative_alphas(betas_from_config(1000, 0.00085, 0.012, "scaled_linear")))
    grid = uniform_timestep_grid(noise, size - 1)
    x = torch.randn(batch, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * grid[0]
    targets = [x]  # the exact ODE solution at every grid point
    for sigma, sigma_next in zip(grid[:-1], grid[1:]):
        targets.append(mixture.exact_solution(targets[-1], [float(sigma), float(sigma_next)], steps_per_interval=200))
    calls = []

    def evaluate(nodes, states):
        calls.append(list(nodes))
        return [mixture.denoiser(state.double(), float(grid[node])).float() for node, state in zip(nodes, states)]

    def final_error(path):
        out = sample(mixture.denoiser, x.float().double(), grid[path], solver)
        return float((out.float() - targets[-1].float()).pow(2).mean())

    return grid, torch.stack(targets).float(), evaluate, final_error, calls


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "unipc"])
def test_student_path_dp_matches_brute_force_on_a_small_grid(solver):
    from diffusers_gits.calibration.search import student_path_dp

    grid, targets, evaluate, final_error, calls = _student_problem(solver)
    size = len(grid)
    result = student_path_dp(grid, targets, range(1, 5), solver, evaluate)
    for k in range(1, 5):
        path = result.schedules[k]
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == size - 1 and path == sorted(set(path))
        # The reported error is exactly that of sampling the schedule from the batch's noises.
        assert result.errors[k] == pytest.approx(final_error(path), rel=1e-4)
        best = min(final_error([0, *inner, size - 1]) for inner in itertools.combinations(range(1, size - 1), k - 1))
        if k <= 2:  # one or two jumps: every path is kept, so the result is the optimum
            assert result.errors[k] == pytest.approx(best, rel=1e-4)
        else:  # one path per node and layer is kept: close to the optimum, never better
            assert best * (1 - 1e-4) <= result.errors[k] <= 1.25 * best
    # Layer 0 evaluates the start once; layer k evaluates every node reachable in k jumps, in descending sigma order.
    assert calls[0] == [0] and all(nodes == list(range(k, size - 1)) for k, nodes in enumerate(calls[1:], start=1))


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "ipndm"])
def test_student_path_dp_with_every_arrival_kept_finds_the_optimum_up_to_three_jumps(solver):
    from diffusers_gits.calibration.search import student_path_dp

    grid, targets, evaluate, final_error, calls = _student_problem(solver)
    size = len(grid)
    single = student_path_dp(grid, targets, range(1, 5), solver, evaluate)
    single_calls = sum(map(len, calls))
    calls.clear()
    result = student_path_dp(grid, targets, range(1, 5), solver, evaluate, arrivals_per_node=size)
    for k in range(1, 5):
        assert result.errors[k] == pytest.approx(final_error(result.schedules[k]), rel=1e-4)
        best = min(final_error([0, *inner, size - 1]) for inner in itertools.combinations(range(1, size - 1), k - 1))
        if k <= 3:  # every path into a node is kept, and each offers its final sample: the optimum
            assert result.errors[k] == pytest.approx(best, rel=1e-4)
            assert result.errors[k] <= single.errors[k] * (1 + 1e-4)
        else:
            assert best * (1 - 1e-4) <= result.errors[k] <= 1.25 * best
    # Each rank of arrival is evaluated in its own call, in descending sigma order: layer k holds the k-jump paths
    # into node j, at most min(j, size) of them.
    assert calls[0] == [0] and all(nodes == sorted(nodes) for nodes in calls)
    evaluated = sum(map(len, calls))
    assert single_calls < evaluated <= size * single_calls


def _unipc_arrivals(grid, targets, evaluate, denoised_at_arrival):
    """`{j: {i: (predicted, corrected)}}` for every two-jump path 0 -> i -> j, by sampling with UniPC: the state its
    predictor reached at j, and the state it steps from there after its corrector with `denoised_at_arrival(j, x)`."""
    from diffusers_gits.solvers import SolverHistory, unipc_step

    arrivals = {}
    for j in range(2, len(grid) - 1):
        arrivals[j] = {}
        for i in range(1, j):
            x, history = targets[0], SolverHistory()
            for a, b in ((0, i), (i, j)):
                x, history = unipc_step(x, evaluate([a], [x])[0], float(grid[a]), float(grid[b]), history)
            _, after = unipc_step(x, denoised_at_arrival(j, x), float(grid[j]), float(grid[j + 1]), history)
            arrivals[j][i] = (x, after.states[-1])
    return arrivals


def _closest(arrivals, targets, which):
    return {
        j: min(paths, key=lambda i: float((paths[i][which] - targets[j]).pow(2).mean()))
        for j, paths in arrivals.items()
    }


def test_student_path_dp_continues_from_the_arrival_closest_after_unipcs_corrector():
    """Four jumps with every arrival kept, by brute force over sampling: the two-jump path into node j that continues
    is the one whose state after UniPC's corrector (the state UniPC steps from) is closest to the target, and every
    continuation is offered. Judged before the corrector, another path would continue from some node here."""
    from diffusers_gits.calibration.search import student_path_dp

    grid, targets, evaluate, final_error, _ = _student_problem("unipc")
    size, last = len(grid), len(grid) - 1
    arrivals = _unipc_arrivals(grid, targets, evaluate, lambda j, x: evaluate([j], [x])[0])
    corrected, predicted = _closest(arrivals, targets, 1), _closest(arrivals, targets, 0)
    assert corrected != predicted
    result = student_path_dp(grid, targets, [4], "unipc", evaluate, arrivals_per_node=size)
    best = min(
        (final_error([0, corrected[j], j, node, last]), [0, corrected[j], j, node, last])
        for j in range(2, last)
        for node in range(j + 1, last)
    )
    assert result.errors[4] == pytest.approx(best[0], rel=1e-4) and result.schedules[4] == best[1]


def test_student_path_dp_ranks_unipc_arrivals_after_its_corrector_with_the_teachers_denoised():
    """With the teacher's denoised values along the grid, one arrival per node is kept, the one closest to the target
    after UniPC's corrector fed the teacher's denoised value (no model call); without them, the one closest before it.
    Three jumps by brute force: the best final sample of the kept two-jump paths continued into sigma = 0."""
    from diffusers_gits.calibration.search import student_path_dp

    grid, targets, evaluate, final_error, _ = _student_problem("unipc")
    last = len(grid) - 1
    teacher_denoised = torch.stack(evaluate(list(range(last)), list(targets[:-1])))
    arrivals = _unipc_arrivals(grid, targets, evaluate, lambda j, x: teacher_denoised[j])
    estimated, predicted = _closest(arrivals, targets, 1), _closest(arrivals, targets, 0)
    assert estimated != predicted
    for kept, denoised in ((estimated, teacher_denoised), (predicted, None)):
        result = student_path_dp(grid, targets, [3], "unipc", evaluate, target_denoised=denoised)
        best = min((final_error([0, kept[j], j, last]), [0, kept[j], j, last]) for j in range(2, last))
        assert result.errors[3] == pytest.approx(best[0], rel=1e-4) and result.schedules[3] == best[1]


def test_student_path_dp_rejects_bad_input():
    from diffusers_gits.calibration.search import student_path_dp

    grid, targets, evaluate, _, _ = _student_problem("euler")
    with pytest.raises(ValueError, match="1..7"):
        student_path_dp(grid, targets, [8], "euler", evaluate)
    with pytest.raises(ValueError, match="target states"):
        student_path_dp(grid, targets[:-1], [2], "euler", evaluate)
    with pytest.raises(ValueError, match="'heun'"):
        student_path_dp(grid, targets, [2], "heun", evaluate)
    with pytest.raises(ValueError, match="arrivals_per_node must be >= 1, got 0"):
        student_path_dp(grid, targets, [2], "euler", evaluate, arrivals_per_node=0)
    with pytest.raises(TypeError, match="arrivals_per_node must be an int"):
        student_path_dp(grid, targets, [2], "euler", evaluate, arrivals_per_node=2.0)
