import math

import numpy as np
import pytest
import torch

from diffusers_gits.noise import FLOW_PATH, SIGMA_PATH
from diffusers_gits.solvers import SOLVERS, SolverHistory, get_solver, ipndm_step, sample
from diffusers_gits.testing.gaussian_mixture import GaussianMixture


def log_spaced(n, sigma_max=10.0, sigma_min=0.1):
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n + 1)).tolist()


@pytest.fixture(scope="module")
def smooth_problem():
    gm = GaussianMixture.random()
    gm.stds = gm.stds + 0.5  # wider components: a smooth ODE where the asymptotic order shows at moderate N
    x = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    return gm, x, gm.exact_solution(x, [10.0, 0.1], steps_per_interval=4000)


@pytest.mark.parametrize(
    "solver,steps,min_order",
    [
        ("euler", (128, 256, 512), 0.9),
        ("dpmpp_2m", (32, 64, 128), 1.8),
        ("ipndm", (32, 64, 128), 2.5),
        ("unipc", (32, 64, 128), 2.5),
    ],
)
def test_global_convergence_order(smooth_problem, solver, steps, min_order):
    gm, x, reference = smooth_problem
    errors = [(sample(gm.denoiser, x, log_spaced(n), solver) - reference).pow(2).mean().sqrt().item() for n in steps]
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert min(orders) > min_order, (errors, orders)


def test_ipndm_local_error_is_fourth_order_with_exact_history():
    """With exact past points, one AB-4 step has local error O(h^5): halving h divides it by about 32."""
    mean, std = 0.7, 0.4  # one Gaussian: x(sigma) = mean + sqrt((std^2 + sigma^2) / (std^2 + s0^2)) (x0 - mean)
    s0, x0 = 5.0, torch.tensor([3.0], dtype=torch.float64)

    def exact(sigma):
        return mean + math.sqrt((std**2 + sigma**2) / (std**2 + s0**2)) * (x0 - mean)

    def denoised(x, sigma):
        return mean + std**2 / (std**2 + sigma**2) * (x - mean)

    local = []
    for h in (0.2, 0.1):
        nodes = [2.0 + 3 * h, 2.0 + 2 * h, 2.0 + h]
        history = SolverHistory()
        for s in nodes:
            history = history.push(s, exact(s), denoised(exact(s), s), order=4)
        x = exact(2.0)
        x_next, _ = ipndm_step(x, denoised(x, 2.0), 2.0, 2.0 - h, history)
        local.append((x_next - exact(2.0 - h)).abs().item())
    assert local[0] / local[1] > 20


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("num_steps", [1, 2])
def test_every_solver_runs_one_and_two_steps_to_zero(solver, num_steps):
    gm = GaussianMixture.random()
    x = 14.6 * torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = np.append(np.exp(np.linspace(np.log(14.6), np.log(0.5), num_steps)), 0.0)
    out = sample(gm.denoiser, x, sigmas, solver)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_step_into_zero_returns_denoised(solver):
    x, denoised = torch.randn(3, 2), torch.randn(3, 2)
    history = SolverHistory().push(2.0, torch.randn(3, 2), torch.randn(3, 2), order=1)
    x_next, new_history = get_solver(solver)(x, denoised, 1.0, 0.0, history)
    torch.testing.assert_close(x_next, denoised)
    assert len(new_history) == 2


def test_euler_equals_ddim_update():
    x, denoised = torch.randn(5), torch.randn(5)
    x_next, _ = get_solver("euler")(x, denoised, 3.0, 1.0, SolverHistory())
    torch.testing.assert_close(x_next, x + (1.0 - 3.0) * (x - denoised) / 3.0)


def test_solvers_agree_with_exact_solution_on_fine_grid():
    gm = GaussianMixture.random()
    x = 10 * torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    reference = gm.exact_solution(x, [10.0, 0.1])
    for solver in SOLVERS:
        out = sample(gm.denoiser, x, log_spaced(400), solver)
        assert (out - reference).abs().max() < 2e-2, solver


def test_unknown_solver_names_choices():
    with pytest.raises(ValueError, match="'heun'.*dpmpp_2m"):
        get_solver("heun")


@pytest.fixture(scope="module")
def smooth_flow_problem(smooth_problem):
    gm = smooth_problem[0]
    noise = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return gm, noise, sample(gm.flow_denoiser, noise, np.linspace(1, 0.1, 8001), "ipndm", path=FLOW_PATH)


@pytest.mark.parametrize(
    "solver,steps,min_order",
    [
        ("euler", (128, 256, 512), 0.9),
        ("dpmpp_2m", (32, 64, 128), 1.7),
        (
            "ipndm",
            (32, 64, 128),
            1.9,
        ),  # its first step is Euler: the warm-up caps the global order at 2 from pure noise
        ("unipc", (32, 64, 128), 2.5),
    ],
)
def test_flow_path_convergence_order_from_pure_noise(smooth_flow_problem, solver, steps, min_order):
    """On the flow path every solver starts at sigma = 1 (signal 0, log-SNR -inf) and still converges at its order."""
    gm, noise, reference = smooth_flow_problem
    errors = [
        (sample(gm.flow_denoiser, noise, np.linspace(1, 0.1, n + 1), solver, path=FLOW_PATH) - reference)
        .pow(2)
        .mean()
        .sqrt()
        .item()
        for n in steps
    ]
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert min(orders) > min_order, (errors, orders)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "unipc"])
def test_exponential_integrators_are_the_same_method_on_both_paths(solver):
    """DDIM, DPM-Solver++ and UniPC are invariant to the change of variables between the flow and sigma paths."""
    gm = GaussianMixture.random()
    flow_sigmas = [0.95, 0.8, 0.6, 0.45, 0.3, 0.15, 0.05, 0.0]
    x = 0.95 * torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    on_flow = sample(gm.flow_denoiser, x, flow_sigmas, solver, path=FLOW_PATH)
    on_sigma = sample(gm.denoiser, x / (1 - 0.95), [s / (1 - s) for s in flow_sigmas], solver, path=SIGMA_PATH)
    torch.testing.assert_close(on_flow, on_sigma, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_first_step_from_pure_noise_is_the_ddim_limit(solver):
    """From sigma = 1 the exponential integrators reduce to `sigma_next * x + (1 - sigma_next) * D`, finite."""
    x, denoised = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    x_next, history = get_solver(solver, FLOW_PATH)(x, denoised, 1.0, 0.7, SolverHistory())
    torch.testing.assert_close(x_next, 0.7 * x + 0.3 * denoised)
    x_after, _ = get_solver(solver, FLOW_PATH)(x_next, denoised, 0.7, 0.4, history)
    assert torch.isfinite(x_after).all()
