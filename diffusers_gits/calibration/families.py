"""What calibration needs to know about a model family: its fine grid, baselines, default and refinement coordinate.

A VP model (SD, SDXL, PixArt, DDPM) is searched on a grid uniform in its training timesteps; a flow-matching model
(SD3, Flux) on a grid uniform in sigma before the model's shift, i.e. the shifted schedule the model itself samples
with at `grid_size` steps (Flux's default), so the grid is dense where the model's designers put their steps at that
resolution. Refinement moves schedule points in the same coordinate the grid is uniform in.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..noise import VPNoiseSchedule, is_flow_scheduler_config, shift_flow_sigmas, unshift_flow_sigmas
from ..schedule_format import calibration_summary
from ..schedules import (
    baseline_schedules,
    flow_baseline_schedules,
    flow_shifted_sigmas,
    flow_sigmas_default,
    flow_stock_sigmas,
    stock_solver_sigmas,
)
from ..scheduling_gits import GITSScheduler
from ..scheduling_gits_flow_match import GITSFlowMatchScheduler
from .search import uniform_timestep_grid


@dataclass
class ModelFamily:
    """A model family as calibration sees it.

    Attributes:
        scheduler_class: the GITS scheduler class for the family.
        base_config: the pipeline's scheduler config (the model's noise schedule).
        grid: `grid(size)` -> fine grid of `size` non-zero sigmas, then 0.
        baselines: `baselines(N)` -> the schedules people use today, by name.
        default: `default(N, solver)` -> the schedule the pipeline runs today for N steps with `solver`'s stock
            diffusers scheduler (flow: FlowMatchEuler's, whatever the solver).
        to_coordinate / from_coordinate: sigmas <-> the coordinate the grid is uniform in.
        lowest: the coordinate the last non-zero point must stay above.
        spacing: `spacing(grid_size)` -> grid spacing in that coordinate.
        metadata: what the calibration records about the family (grid type, shift, mu).
    """

    scheduler_class: type
    base_config: dict
    grid: Callable[[int], np.ndarray]
    baselines: Callable[[int], dict[str, np.ndarray]]
    default: Callable[[int, str], np.ndarray]
    to_coordinate: Callable[[np.ndarray], np.ndarray]
    from_coordinate: Callable[[np.ndarray], np.ndarray]
    lowest: float
    spacing: Callable[[int], float]
    metadata: dict = field(default_factory=dict)

    def fine_grid(self, grid_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The grid with every interval halved in its own coordinate, and where the grid's points lie in it.

        The teacher solves here, so its states at the grid's points (and its final sample) are accurate enough to
        judge the few-step schedules searched on the grid. The last interval is halved too where the coordinate
        allows (flow models; a VP grid already ends at timestep 0).

        Returns:
            `(fine_sigmas, indices)` with `fine_sigmas[indices]` equal to `grid(grid_size)`.
        """
        grid = self.grid(grid_size)
        u = self.to_coordinate(grid[:-1])
        points = [u[0]]
        for previous, current in zip(u[:-1], u[1:]):
            points += [(previous + current) / 2, current]
        if u[-1] > 0:
            points.append(u[-1] / 2)
        fine = np.append(self.from_coordinate(np.array(points)), 0.0)
        indices = np.append(np.arange(0, 2 * len(u) - 1, 2), len(fine) - 1)
        fine[indices] = grid  # exactly the grid's values, not their round trip through the coordinate
        return fine, indices

    def scheduler(self, solver: str, schedules: dict[int, np.ndarray], record: dict | None = None):
        """A scheduler of this family sampling `schedules` with `solver`, with the calibration `record` (its config
        keeps the summary)."""
        table = {str(k): [float(s) for s in sigmas] for k, sigmas in schedules.items()}
        summary = calibration_summary(record) if record is not None else None
        scheduler = self.scheduler_class.from_config(
            self.base_config, solver=solver, gits_sigmas=table, calibration=summary
        )
        scheduler.calibration_record = record
        return scheduler


def vp_family(base_config: dict) -> ModelFamily:
    noise = VPNoiseSchedule.from_config(base_config)
    return ModelFamily(
        scheduler_class=GITSScheduler,
        base_config=base_config,
        grid=lambda size: uniform_timestep_grid(noise, size),
        baselines=lambda k: baseline_schedules(noise, k),
        default=lambda k, solver: stock_solver_sigmas(base_config, solver, k),
        to_coordinate=noise.sigma_to_t,
        from_coordinate=noise.t_to_sigma,
        lowest=-1e-9,  # the last point may reach timestep 0
        spacing=lambda size: (noise.num_train_timesteps - 1) / (size - 1),
        metadata={"family": "vp", "grid_type": "uniform_timestep"},
    )


def flow_family(
    base_config: dict,
    mu: float | None,
    pipeline_passes_sigmas: bool,
    mu_per_step: dict[int, float] | None = None,
) -> ModelFamily:
    """The flow family at the shift the pipeline samples with (`mu` under dynamic shifting).

    `pipeline_passes_sigmas`: the pipeline sends `linspace(1, 1/N, N)` itself (Flux), so its default is the shifted
    uniform schedule; otherwise (SD3) it is FlowMatchEuler's own default. `mu_per_step`: the `mu` the pipeline passes
    at each step count where it depends on it (Flux.2: `compute_empirical_mu(image_seq_len, num_steps)`); the
    defaults and baselines of step count N then use its own `mu`, the grid `mu`.
    """
    scheduler = GITSFlowMatchScheduler.from_config(base_config)
    factor = scheduler.shift_factor(mu)
    sigma_min = scheduler.train_sigma_min
    mu_per_step = dict(mu_per_step or {})

    def mu_at(k: int) -> float | None:
        return mu_per_step.get(k, mu)

    def default(k: int, solver: str) -> np.ndarray:
        factor_k = scheduler.shift_factor(mu_at(k))
        if pipeline_passes_sigmas:
            return flow_shifted_sigmas(k, factor_k)
        if base_config.get("use_flow_sigmas"):  # Wan's, Sana's UniPC / DPM-Solver
            return flow_sigmas_default(k, factor_k, base_config.get("num_train_timesteps", 1000))
        return flow_stock_sigmas(k, factor_k, sigma_min)

    def baselines(k: int) -> dict[str, np.ndarray]:
        factor_k = scheduler.shift_factor(mu_at(k))
        return flow_baseline_schedules(k, factor_k, sigma_min, base_config, mu_at(k), pipeline_passes_sigmas)

    metadata = {"family": "flow", "grid_type": "shifted_uniform_sigma", "mu": mu, "shift_factor": factor}
    if mu_per_step:
        metadata["mu_per_step"] = {str(k): float(v) for k, v in sorted(mu_per_step.items())}
    return ModelFamily(
        scheduler_class=GITSFlowMatchScheduler,
        base_config=base_config,
        grid=lambda size: flow_shifted_sigmas(size, factor),
        baselines=baselines,
        default=default,
        to_coordinate=lambda sigmas: unshift_flow_sigmas(sigmas, factor),
        from_coordinate=lambda u: shift_flow_sigmas(u, factor),
        lowest=0.0,
        spacing=lambda size: 1.0 / size,
        metadata=metadata,
    )


def model_family(
    base_config: dict,
    mu: float | None = None,
    pipeline_passes_sigmas: bool = False,
    mu_per_step: dict[int, float] | None = None,
) -> ModelFamily:
    """The family of a pipeline's scheduler config (the flow arguments as in `flow_family`)."""
    if is_flow_scheduler_config(base_config):
        return flow_family(base_config, mu, pipeline_passes_sigmas, mu_per_step)
    return vp_family(base_config)
