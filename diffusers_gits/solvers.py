"""ODE solvers for diffusion sampling, each one step function, implemented once for every model family.

Every solver has the signature `step(x, denoised, sigma, sigma_next, history, path) -> (x_next, history)`, where `x`
is the state at noise level `sigma` on `path` (`SIGMA_PATH` for VP models, `FLOW_PATH` for flow matching; see
`diffusers_gits.noise.OdePath`), `denoised` is D(x; sigma), and `history` is an immutable `SolverHistory` returned by
the previous step (empty at the start). The probability-flow ODE is `dx/dsigma = (x - D(x; sigma)) / sigma` on both
paths; the exponential integrators use the log-SNR `lambda = log(signal(sigma) / sigma)` (`-log sigma` on the sigma
path). The order drops where history is missing or lies at pure noise (lambda = -inf), and every solver takes a
first-order step into `sigma_next = 0` (that step returns the denoised sample), so no solver divides by zero there.
The scheduler, the calibration and the tests all call these functions: nothing here knows about timesteps,
prediction types or pipelines.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .noise import SIGMA_PATH, OdePath


@dataclass(frozen=True)
class SolverHistory:
    """What a multistep solver remembers: the last few (sigma, state, denoised) points, most recent last.

    Attributes:
        sigmas (`tuple[float, ...]`): noise levels of the remembered points.
        states (`tuple[torch.Tensor, ...]`): sigma-space states the solver stepped from at those points (after the
            UniPC corrector, for UniPC).
        denoised (`tuple[torch.Tensor, ...]`): D(x; sigma) at those points.
        last_order (`int`): the order of the last step taken (UniPC's corrector reuses it).
    """

    sigmas: tuple[float, ...] = ()
    states: tuple[torch.Tensor, ...] = ()
    denoised: tuple[torch.Tensor, ...] = ()
    last_order: int = 0

    def push(
        self, sigma: float, x: torch.Tensor, denoised: torch.Tensor, order: int, keep: int = 3
    ) -> "SolverHistory":
        return SolverHistory(
            sigmas=(self.sigmas + (sigma,))[-keep:],
            states=(self.states + (x,))[-keep:],
            denoised=(self.denoised + (denoised,))[-keep:],
            last_order=order,
        )

    def __len__(self) -> int:
        return len(self.sigmas)


StepFunction = Callable[..., tuple[torch.Tensor, SolverHistory]]


def euler_step(x, denoised, sigma, sigma_next, history, path: OdePath = SIGMA_PATH):
    """First-order Euler step of the probability-flow ODE; identical to deterministic DDIM (Song et al. 2021).

    The same formula is DDIM on either path: on the flow path it is also FlowMatchEuler's step.
    """
    x_next = denoised + (sigma_next / sigma) * (x - denoised)
    return x_next, history.push(sigma, x, denoised, order=1)


@functools.lru_cache(maxsize=4096)  # a scheduler reuses its schedule for every image: solve each system once
def _adams_bashforth_weights(nodes: tuple[float, ...], sigma: float, sigma_next: float) -> np.ndarray:
    """Weights w_j with integral over [sigma, sigma_next] of the interpolant through `nodes` = sum_j w_j * d_j.

    In the rescaled variable u = (s - sigma) / (sigma_next - sigma) the rule must integrate 1, u, ..., u^(q-1) exactly
    over [0, 1], a q x q Vandermonde system; the step is then `x + (sigma_next - sigma) * sum_j w_j d_j`.
    """
    u = np.array([(s - sigma) / (sigma_next - sigma) for s in nodes])
    powers = np.arange(len(u))
    return np.linalg.solve(u[None, :] ** powers[:, None], 1.0 / (powers + 1))


def ipndm_step(x, denoised, sigma, sigma_next, history, path: OdePath = SIGMA_PATH, max_order: int = 4):
    """Variable-step improved PNDM (Zhang & Chen 2023, "iPNDM-v"): Adams-Bashforth in sigma of order <= `max_order`.

    The slope `d = (x - D) / sigma` at this point and at up to `max_order - 1` remembered points is interpolated by a
    polynomial in sigma, which is integrated exactly over [sigma, sigma_next]; the order rises by one per step. On
    the flow path the slope is the velocity and sigma the flow time, which stays finite at pure noise.
    """
    order = 1 if sigma_next == 0 else min(max_order, len(history) + 1)
    d = (x - denoised) / sigma
    if order == 1:
        x_next = x + (sigma_next - sigma) * d
    else:
        past = range(len(history) - 1, len(history) - order, -1)
        nodes = [sigma] + [history.sigmas[k] for k in past]
        slopes = [d] + [(history.states[k] - history.denoised[k]) / history.sigmas[k] for k in past]
        weights = _adams_bashforth_weights(tuple(nodes), sigma, sigma_next)
        x_next = x + (sigma_next - sigma) * sum(float(w) * s for w, s in zip(weights, slopes))
    return x_next, history.push(sigma, x, denoised, order=order)


def _usable_history(history: SolverHistory, path: OdePath) -> int:
    """How many of the most recent remembered points have a finite log-SNR (a point at pure noise carries no slope)."""
    count = 0
    for sigma in reversed(history.sigmas):
        if path.log_snr(sigma) == -math.inf:
            break
        count += 1
    return count


def dpmpp_2m_step(x, denoised, sigma, sigma_next, history, path: OdePath = SIGMA_PATH):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, midpoint form.

    With h = lambda_next - lambda and r = h_last / h: `x_next = (sigma_next / sigma) x - a_next (e^-h - 1) D_eff`,
    where `a_next = signal(sigma_next)` and `D_eff = (1 + 1 / 2r) D - (1 / 2r) D_last`; first order (D_eff = D) without
    usable history or into sigma_next = 0. From pure noise (h = inf) the step is `sigma_next x + a_next D`.
    """
    if sigma_next == 0:
        return denoised, history.push(sigma, x, denoised, order=1)
    lam = path.log_snr(sigma)
    h = path.log_snr(sigma_next) - lam
    if _usable_history(history, path) == 0:
        d_eff, order = denoised, 1
    else:
        r = (lam - path.log_snr(history.sigmas[-1])) / h
        d_eff, order = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * history.denoised[-1], 2
    x_next = (sigma_next / sigma) * x - path.signal(sigma_next) * math.expm1(-h) * d_eff
    return x_next, history.push(sigma, x, denoised, order=order)


@functools.lru_cache(maxsize=4096)
def _unipc_rhos(h: float, rks: tuple[float, ...], corrector: bool) -> tuple[float, float, tuple[float, ...]]:
    """h_phi_1, B(h) and the combination weights rho of UniPC's predictor (`corrector=False`) or corrector."""
    h_phi_1, b_h, r_matrix, b = _unipc_coefficients(h, list(rks))
    order = len(rks)
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(r_matrix, b)
    elif order == 1:
        rhos = np.array([])
    else:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(r_matrix[:-1, :-1], b[:-1])
    return h_phi_1, b_h, tuple(float(rho) for rho in rhos)


def _unipc_coefficients(h: float, rks: list[float]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """UniPC (Zhao et al. 2023) bh2 quantities for data prediction: h_phi_1, B(h), the matrix R and vector b.

    `rks` are the ratios (lambda_k - lambda_s) / h of the points used, ending with 1.0; eq. (8) and Algorithm 2.
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    rks = np.asarray(rks, dtype=np.float64)
    for i in range(1, len(rks) + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.stack(rows), np.asarray(b)


def _unipc_differences(
    sigmas: tuple[float, ...],
    denoised: tuple[torch.Tensor, ...],
    sigma_s: float,
    h: float,
    order: int,
    m0: torch.Tensor,
    path: OdePath,
):
    """Ratios r_k and scaled differences (D_k - m0) / r_k for the `order - 1` points before the current one."""
    rks, d1s = [], []
    for k in range(1, order):
        r_k = (path.log_snr(sigmas[-k]) - path.log_snr(sigma_s)) / h
        rks.append(r_k)
        d1s.append((denoised[-k] - m0) / r_k)
    return rks, d1s


def unipc_correct(x, denoised, sigma, history, path: OdePath = SIGMA_PATH):
    """UniPC's corrector (UniC, bh2): the state `x` that the last predictor step reached at `sigma`, refined with the
    denoised value there, `D(x; sigma)`, at no extra model call; it has the previous step's order. Without history
    (the first step) `x` is returned as is."""
    if len(history) == 0:
        return x
    sigma_s, x_s, m0 = history.sigmas[-1], history.states[-1], history.denoised[-1]
    h = path.log_snr(sigma) - path.log_snr(sigma_s)
    order = history.last_order
    rks, d1s = _unipc_differences(history.sigmas[:-1], history.denoised[:-1], sigma_s, h, order, m0, path)
    h_phi_1, b_h, rhos = _unipc_rhos(h, tuple(rks) + (1.0,), corrector=True)
    x_base = (sigma / sigma_s) * x_s - path.signal(sigma) * h_phi_1 * m0
    correction = sum(rho * d1 for rho, d1 in zip(rhos[:-1], d1s)) + rhos[-1] * (denoised - m0)
    return x_base - path.signal(sigma) * b_h * correction


def unipc_step(x, denoised, sigma, sigma_next, history, path: OdePath = SIGMA_PATH, max_order: int = 2):
    """UniPC with the bh2 variant (Zhao et al. 2023): the UniC corrector on `x`, then the UniP predictor.

    The corrector refines the state reached by the previous step using the new denoised value at no extra model call;
    it has the previous step's order. The predictor has order min(`max_order`, usable points), 1 into sigma = 0.
    The data terms carry the signal scale `signal(sigma_next)` (1 on the sigma path).
    """
    x = unipc_correct(x, denoised, sigma, history, path)
    if sigma_next == 0:
        return denoised, history.push(sigma, x, denoised, order=1)
    h = path.log_snr(sigma_next) - path.log_snr(sigma)
    order = min(max_order, _usable_history(history, path) + 1)
    rks, d1s = _unipc_differences(history.sigmas, history.denoised, sigma, h, order, denoised, path)
    h_phi_1, b_h, rhos = _unipc_rhos(h, tuple(rks) + (1.0,), corrector=False)
    x_next = (sigma_next / sigma) * x - path.signal(sigma_next) * h_phi_1 * denoised
    if order > 1:
        x_next = x_next - path.signal(sigma_next) * b_h * sum(rho * d1 for rho, d1 in zip(rhos, d1s))
    return x_next, history.push(sigma, x, denoised, order=order)


SolverName = Literal["euler", "ipndm", "dpmpp_2m", "unipc"]
#: The solvers by name (`SolverName`).
SOLVERS: dict[str, StepFunction] = {
    "euler": euler_step,
    "ipndm": ipndm_step,
    "dpmpp_2m": dpmpp_2m_step,
    "unipc": unipc_step,
}


#: Solvers that refine the state a step reached once the model has been evaluated there (at no extra call).
CORRECTORS: dict[str, Callable[..., torch.Tensor]] = {"unipc": unipc_correct}


def _no_correction(x, denoised, sigma, history, path: OdePath = SIGMA_PATH):
    return x


def get_corrector(name: str, path: OdePath = SIGMA_PATH) -> Callable[..., torch.Tensor]:
    """`correct(x, denoised, sigma, history) -> state`: the state solver `name` steps from at `sigma`, given the state
    `x` its previous step reached there and `denoised = D(x; sigma)` (UniPC's corrector; `x` itself for the others)."""
    get_solver(name, path)  # the same check of the name
    return functools.partial(CORRECTORS.get(name, _no_correction), path=path)


def get_solver(name: str, path: OdePath = SIGMA_PATH) -> StepFunction:
    """The step function registered under `name`, stepping on `path`; raises `ValueError` naming the allowed solvers."""
    if name not in SOLVERS:
        raise ValueError(f"solver {name!r} is not supported; choose one of {sorted(SOLVERS)}")
    return functools.partial(SOLVERS[name], path=path)


Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    solver: str = "euler",
    callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
    path: OdePath = SIGMA_PATH,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from `x` at `sigmas[0]` down the schedule `sigmas` (descending).

    Args:
        denoiser: `D(x, sigma) -> x0 estimate`, called once per step.
        x: the start state on `path`, e.g. `sigmas[0] * noise` (sigma path) or `noise` (flow path, sigma 1).
        sigmas: the schedule, descending, usually ending in 0.
        solver: one of `SOLVERS`.
        callback: called as `callback(i, sigma_i, x_i, denoised_i)` after each model call.
        path: the coordinates of `x` and `sigmas`.

    Returns:
        The state at `sigmas[-1]`.
    """
    step = get_solver(solver, path)
    sigmas = [float(s) for s in sigmas]
    history = SolverHistory()
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoiser(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        x, history = step(x, denoised, sigma, sigma_next, history)
    return x
