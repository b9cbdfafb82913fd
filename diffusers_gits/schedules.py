"""Sigma schedules as data: descending 1-D float64 arrays that end in 0, `num_steps + 1` values for `num_steps` steps.

The baseline schedules users sample with today (diffusers' timestep spacings, Karras, log-SNR uniform,
Align-Your-Steps; for flow-matching models uniform sigmas, shifted as Flux and SD3 do) and the GITS authors'
published Stable Diffusion 1.5 table all live here, next to the log-linear interpolation that stretches a schedule
to another step count. VP schedules are in VE sigmas (unbounded), flow schedules in flow sigmas (1 down to 0).
"""

import functools
import inspect
import json
import math
from importlib import resources
from typing import Literal

import numpy as np

from .noise import OdePath, VPNoiseSchedule, shift_flow_sigmas


TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def check_step_count(num_steps, name: str = "num_inference_steps") -> int:
    """`num_steps` as an int >= 1; `TypeError` for a non-integer (bools included), `ValueError` below 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1, got {num_steps}")
    return int(num_steps)


def validate_sigmas(sigmas: np.ndarray | list[float], name: str = "sigmas") -> np.ndarray:
    """Check that `sigmas` is a usable schedule (>= 2 finite values, strictly decreasing, ending in 0) and return it."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"{name} must be a 1-D list of at least 2 values (steps + 1), got shape {sigmas.shape}")
    if not np.all(np.isfinite(sigmas)):
        raise ValueError(f"{name} must be finite, got {sigmas.tolist()}")
    if np.any(sigmas < 0):
        raise ValueError(f"{name} must be non-negative, got {sigmas.tolist()}")
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"{name} must be strictly decreasing, got {sigmas.tolist()}")
    if sigmas[-1] != 0:
        raise ValueError(f"{name} must end in 0 (the final denoise), got last value {sigmas[-1]}")
    return sigmas


def validate_schedule_table(table: dict[str, list[float]]) -> dict[int, np.ndarray]:
    """Check a `{"N": [N + 1 sigmas]}` table (JSON keys are strings) and return it keyed by int step count."""
    checked = {}
    for key, sigmas in table.items():
        try:
            steps = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"gits_sigmas keys must be step counts, got {key!r}") from None
        if steps < 1:
            raise ValueError(f"gits_sigmas[{key!r}]: the step count must be >= 1")
        sigmas = validate_sigmas(sigmas, name=f"gits_sigmas[{key!r}]")
        if len(sigmas) != steps + 1:
            raise ValueError(f"gits_sigmas[{key!r}] must hold {steps + 1} sigmas for {steps} steps, got {len(sigmas)}")
        checked[steps] = sigmas
    return checked


def append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.append(np.asarray(sigmas, dtype=np.float64), 0.0)


def log_snr_blend(start: np.ndarray, end: np.ndarray, weight: float, path: OdePath) -> np.ndarray:
    """The schedule `weight` of the way from `start` to `end`, each interior point in log-SNR (`path.log_snr`), from
    `start`'s first sigma to 0: 0 gives `start`, 1 gives `end`'s interior. Both need the same number of points (their
    first sigmas may differ slightly, as a published table's rounded one does).

    Raises:
        ValueError: `weight` outside [0, 1], schedules of different lengths, or a blend that does not descend from
            `start`'s first sigma (`end`'s interior above it).
    """
    start, end = validate_sigmas(start, "start"), validate_sigmas(end, "end")
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if len(start) != len(end):
        raise ValueError(f"schedules to blend need the same length, got {start.tolist()} and {end.tolist()}")
    ours, theirs = ([path.log_snr(float(s)) for s in sigmas[1:-1]] for sigmas in (start, end))
    interior = path.from_log_snr((1 - weight) * np.asarray(ours) + weight * np.asarray(theirs))
    return validate_sigmas(np.concatenate([start[:1], interior, [0.0]]), "the blend")


def timestep_spacing_sigmas(
    noise: VPNoiseSchedule, num_steps: int, timestep_spacing: str = "linspace", steps_offset: int = 0
) -> np.ndarray:
    """The schedule diffusers' VP schedulers build by default (Lin et al. 2023, Table 2 spacings), ending in 0."""
    t_max = noise.num_train_timesteps
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, t_max - 1, num_steps)[::-1]
    elif timestep_spacing == "leading":
        ratio = t_max // num_steps
        timesteps = (np.arange(num_steps) * ratio)[::-1] + steps_offset
    elif timestep_spacing == "trailing":
        ratio = t_max / num_steps
        timesteps = np.round(np.arange(t_max, 0, -ratio)) - 1
    else:
        raise ValueError(f"timestep_spacing {timestep_spacing!r} is not supported; choose one of {TIMESTEP_SPACINGS}")
    return append_zero(noise.t_to_sigma(np.clip(timesteps, 0, t_max - 1)))


#: The diffusers scheduler that runs each solver today. Diffusers has no VP iPNDM scheduler (its IPNDMScheduler is
#: for VE models), so iPNDM's users get Euler's spacing.
STOCK_SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "ipndm": "EulerDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def stock_solver_sigmas(config: dict, solver: str, num_steps: int) -> np.ndarray:
    """The sigmas the stock diffusers scheduler of `solver`, built from a VP scheduler config, runs for `num_steps`.

    DPM-Solver and UniPC space `linspace` timesteps over N + 1 points and drop the last (ending at t = 999/N, then a
    final step to sigma 0), Euler over N points (ending at t = 0): "the pipeline's default" differs by solver.
    """
    import diffusers

    if solver not in STOCK_SCHEDULERS:
        raise ValueError(f"solver {solver!r} is not supported; choose one of {sorted(STOCK_SCHEDULERS)}")
    noise = VPNoiseSchedule.from_config(config)
    if STOCK_SCHEDULERS[solver] == "EulerDiscreteScheduler":
        spacing, offset = config.get("timestep_spacing", "linspace"), config.get("steps_offset", 0)
        return timestep_spacing_sigmas(noise, num_steps, spacing, offset)
    scheduler_class = getattr(diffusers, STOCK_SCHEDULERS[solver])
    accepted = inspect.signature(scheduler_class.__init__).parameters
    scheduler = scheduler_class(**{k: v for k, v in config.items() if k in accepted and k != "solver_order"})
    scheduler.set_timesteps(num_steps)
    sigmas = scheduler.sigmas.double().numpy()
    if len(sigmas) != num_steps + 1 or sigmas[-1] != 0:
        raise ValueError(
            f"{scheduler_class.__name__} ran {sigmas.tolist()} for {num_steps} steps; expected N + 1 ending in 0"
        )
    return sigmas


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (eq. 5) schedule: uniform in sigma^(1/rho), then 0."""
    ramp = np.linspace(0, 1, num_steps)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return append_zero((inv_max + ramp * (inv_min - inv_max)) ** rho)


def logsnr_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """Uniform in log sigma (= uniform in log-SNR), then 0."""
    return append_zero(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_steps)))


def loglinear_interpolate(sigmas: np.ndarray | list[float], num_steps: int) -> np.ndarray:
    """Stretch a schedule ending in 0 to `num_steps` steps by interpolating log sigma of its non-zero part.

    The non-zero values are placed at uniform positions on [0, 1] and log sigma is interpolated linearly at
    `num_steps` uniform positions, then 0 is appended: the rule NVIDIA recommends for Align-Your-Steps tables.
    """
    sigmas = validate_sigmas(sigmas)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    log_sigmas = np.log(sigmas[:-1])
    if len(log_sigmas) == 1 or num_steps == 1:
        return append_zero(np.exp(np.linspace(log_sigmas[0], log_sigmas[-1], num_steps)))
    positions = np.linspace(0, 1, len(log_sigmas))
    return append_zero(np.exp(np.interp(np.linspace(0, 1, num_steps), positions, log_sigmas)))


def align_your_steps_sd15(num_steps: int) -> np.ndarray:
    """NVIDIA's Align-Your-Steps SD1.5 sigmas (Sabour et al. 2024) as diffusers ships them, log-linear to N steps."""
    from diffusers.schedulers import AysSchedules

    return loglinear_interpolate(AysSchedules["StableDiffusionSigmas"], num_steps)


def load_published_gits_sd15() -> dict:
    """The GITS authors' published SD1.5 table (Chen et al., ICML 2024, arXiv 2405.11326), coeff 1.2, as shipped."""
    return json.loads(resources.files("diffusers_gits").joinpath("tables/published_gits_sd15.json").read_text())


def stretch_published_row(row: np.ndarray | list[float], num_steps: int) -> np.ndarray:
    """A published GITS row (ending at sigma_min) for another step count, by ComfyUI's rule for the authors' tables:
    log sigma of the whole row, sigma_min included, interpolated linearly at `num_steps + 1` uniform positions, then
    the last value set to 0."""
    log_row = np.log(np.asarray(row, dtype=np.float64))
    positions = np.linspace(0, 1, len(log_row))
    stretched = np.exp(np.interp(np.linspace(0, 1, num_steps + 1), positions, log_row))
    stretched[-1] = 0.0
    return stretched


@functools.cache
def load_gits_sd15_coeff_tables() -> dict:
    """The authors' SD1.5 tables for coeff 0.80-1.50 (steps 2-20), as ComfyUI ships them; see the file's `source`."""
    return json.loads(resources.files("diffusers_gits").joinpath("tables/gits_sd15_coeffs.json").read_text())


def sd15_coeffs() -> list[float]:
    """The coeff values the authors' SD1.5 tables exist for."""
    return sorted(float(c) for c in load_gits_sd15_coeff_tables()["coeffs"])


def published_gits_sd15(num_steps: int, coeff: float = 1.2) -> np.ndarray:
    """The authors' SD1.5 GITS schedule for `num_steps` and `coeff`, its final sigma_min replaced by 0 (ComfyUI's
    practice).

    Rows exist for every step count 2-20 and coeff 0.80-1.50 in steps of 0.05 (1.2 is the published default); beyond
    20 (and for 1 step) the nearest row is stretched by ComfyUI's rule (`stretch_published_row`). Valid for models on
    SD's noise schedule only.
    """
    check_step_count(num_steps)
    tables = load_gits_sd15_coeff_tables()["coeffs"]
    key = f"{coeff:.2f}" if isinstance(coeff, (int, float)) and not isinstance(coeff, bool) else None
    if key not in tables or abs(float(key) - coeff) > 1e-9:
        raise ValueError(f"the SD1.5 GITS tables exist for coeff in {sd15_coeffs()}, got coeff={coeff!r}")
    table = {int(k): row for k, row in tables[key].items()}
    if num_steps in table:
        return np.append(np.asarray(table[num_steps][:-1], dtype=np.float64), 0.0)
    nearest = min(table) if num_steps < min(table) else max(table)
    return stretch_published_row(table[nearest], num_steps)


def sd15_tables_apply(noise: VPNoiseSchedule) -> bool:
    """Whether the published SD1.5 tables fit this noise schedule: SD's sigma range, to 1%."""
    table = load_published_gits_sd15()
    return bool(np.allclose([noise.sigma_min, noise.sigma_max], [table["sigma_min"], table["sigma_max"]], rtol=1e-2))


def baseline_schedules(noise: VPNoiseSchedule, num_steps: int) -> dict[str, np.ndarray]:
    """The full-range schedules people sample with today, for `num_steps` steps.

    Uniform timesteps (diffusers' `linspace` spacing), Karras rho = 7 and log-SNR uniform always; Align-Your-Steps SD1.5
    and the authors' published SD1.5 GITS table only when the model has SD's noise schedule.
    """
    schedules = {
        "uniform": timestep_spacing_sigmas(noise, num_steps, "linspace"),
        "karras": karras_sigmas(noise.sigma_min, noise.sigma_max, num_steps),
        "logsnr": logsnr_sigmas(noise.sigma_min, noise.sigma_max, num_steps),
    }
    if sd15_tables_apply(noise):
        schedules["ays_sd15"] = align_your_steps_sd15(num_steps)
        schedules["gits_sd15_published"] = published_gits_sd15(num_steps)
    return schedules


def flow_shifted_sigmas(num_steps: int, factor: float) -> np.ndarray:
    """Uniform flow sigmas `1, 1 - 1/N, ..., 1/N, 0` shifted by `factor`: what Flux runs by default (it passes
    `linspace(1, 1/N, N)` and FlowMatchEuler shifts them with `mu`), and SD3 when given uniform sigmas."""
    return shift_flow_sigmas(np.linspace(1.0, 0.0, num_steps + 1), factor)


def flow_stock_sigmas(num_steps: int, factor: float, train_sigma_min: float) -> np.ndarray:
    """What `FlowMatchEulerDiscreteScheduler.set_timesteps(N)` builds without custom sigmas (SD3's default).

    Uniform from 1 to the scheduler's smallest training sigma (`train_sigma_min`: the shifted `1 / T` under a static
    shift, `1 / T` with dynamic shifting), then shifted by `factor`, then 0; under a static shift the small end is
    therefore shifted twice, as diffusers does (issue #13243).
    """
    return append_zero(shift_flow_sigmas(np.linspace(1.0, train_sigma_min, num_steps), factor))


def flow_sigmas_default(num_steps: int, factor: float, num_train_timesteps: int = 1000) -> np.ndarray:
    """What UniPC / DPM-Solver with `use_flow_sigmas=True` (Wan, Sana) sample for N steps without custom sigmas:
    `linspace(1, 1/T, N + 1)[:-1]` shifted by `factor`, then 0 (diffusers' own nudge of a first sigma of exactly 1 by
    1e-6 is left out)."""
    return append_zero(shift_flow_sigmas(np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1], factor))


#: FlowMatchEulerDiscreteScheduler's options that replace the schedule's spacing, by baseline name.
FLOW_STOCK_SPACINGS = {
    "beta": "use_beta_sigmas",
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
}


def flow_stock_spacing_sigmas(
    config: dict, spacing: str, num_steps: int, mu: float | None = None, pipeline_passes_sigmas: bool = False
) -> np.ndarray:
    """The sigmas `FlowMatchEulerDiscreteScheduler` samples with `use_{spacing}_sigmas=True` for `num_steps` steps.

    Computed by diffusers itself from the model's scheduler `config` (its shift settings) at `mu`, from the sigmas the
    pipeline hands it: Flux passes `linspace(1, 1/N, N)` (`pipeline_passes_sigmas`), SD3 nothing. Beta sigmas (Lee et
    al. 2024, "Beta Sampling is All You Need") need scipy, as in diffusers.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if spacing not in FLOW_STOCK_SPACINGS:
        raise ValueError(f"spacing {spacing!r} is not supported; choose one of {sorted(FLOW_STOCK_SPACINGS)}")
    accepted = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
    options = {k: v for k, v in config.items() if k in accepted and k not in FLOW_STOCK_SPACINGS.values()}
    scheduler = FlowMatchEulerDiscreteScheduler(**options, **{FLOW_STOCK_SPACINGS[spacing]: True})
    if pipeline_passes_sigmas:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    else:
        scheduler.set_timesteps(num_steps, mu=mu)
    return validate_sigmas(scheduler.sigmas.double().numpy(), name=f"FlowMatchEuler's {spacing} sigmas")


def load_published_tables() -> dict:
    """Published flow-matching tables: OSS (Pei et al. 2025, "Optimal Stepsize for Diffusion Sampling") for Flux at
    10 steps and Wan at 20, as ComfyUI ships them (already shifted for the model's default resolution)."""
    return json.loads(resources.files("diffusers_gits").joinpath("tables/published_flow_tables.json").read_text())


#: The OSS tables ComfyUI ships (`published_flow_tables.json`): their key and the shift they were searched at, that
#: of the model's default resolution (Flux.1 at 1024 px: mu = 1.15, shift e^1.15; Wan in ComfyUI: 8.0).
OSS_TABLES = {
    "flux": {"key": "flux_flow_sigmas_10", "shift": math.exp(1.15)},
    "wan": {"key": "wan_flow_sigmas_20", "shift": 8.0},
}


def oss_sigmas(model: Literal["flux", "wan"], num_steps: int) -> np.ndarray:
    """The OSS table of `model` for `num_steps`: its sigmas stretched log-linearly to N + 1 and the last set to 0
    (ComfyUI's rule for its OSS tables), used as given (the table is already shifted, see `OSS_TABLES`)."""
    if model not in OSS_TABLES:
        raise ValueError(f"there is no OSS table for {model!r}; available: {sorted(OSS_TABLES)}")
    check_step_count(num_steps)
    return stretch_published_row(load_published_tables()["oss"][OSS_TABLES[model]["key"]], num_steps)


def oss_flux_sigmas(num_steps: int) -> np.ndarray:
    """The OSS Flux table for `num_steps` (`oss_sigmas("flux", num_steps)`)."""
    return oss_sigmas("flux", num_steps)


#: Published schedules a scheduler can be built from without calibration (`from_preset`).
PRESETS = ("sd15", "oss_flux", "oss_wan")


def preset_schedule(name: str, num_steps: int, coeff: float | None = None) -> np.ndarray:
    """The N-step schedule of preset `name`: the authors' SD1.5 GITS table at `coeff` (VE sigmas) or an OSS table (flow
    sigmas), each for other step counts by its published stretching rule."""
    if name == "sd15":
        return published_gits_sd15(num_steps, 1.2 if coeff is None else coeff)
    if name in ("oss_flux", "oss_wan"):
        return oss_sigmas(name.removeprefix("oss_"), num_steps)
    raise ValueError(f"preset {name!r} does not exist; available: {list(PRESETS)}")


def flow_baseline_schedules(
    num_steps: int,
    factor: float,
    train_sigma_min: float,
    stock_config: dict | None = None,
    mu: float | None = None,
    pipeline_passes_sigmas: bool = False,
) -> dict[str, np.ndarray]:
    """The flow-matching schedules people sample with today.

    Always: uniform sigmas unshifted, uniform sigmas with the model's shift (Flux's default), the stock scheduler's
    own default (`stock_default`: FlowMatchEuler's, SD3's; with a flow-sigmas `stock_config`, that of UniPC /
    DPM-Solver, `flow_sigmas_default`) and the OSS Flux table. With the model's scheduler config (`stock_config`, and `mu` /
    `pipeline_passes_sigmas` as in `flow_stock_spacing_sigmas`) also FlowMatchEuler's beta, Karras and exponential
    spacings, as diffusers computes them for that model.
    """
    schedules = {
        "uniform": np.linspace(1.0, 0.0, num_steps + 1),
        "shifted": flow_shifted_sigmas(num_steps, factor),
        "stock_default": (
            flow_sigmas_default(num_steps, factor, stock_config.get("num_train_timesteps", 1000))
            if stock_config is not None and stock_config.get("use_flow_sigmas")
            else flow_stock_sigmas(num_steps, factor, train_sigma_min)
        ),
        "oss_flux": oss_flux_sigmas(num_steps),
    }
    if stock_config is not None:
        for spacing in FLOW_STOCK_SPACINGS:
            schedules[spacing] = flow_stock_spacing_sigmas(
                stock_config, spacing, num_steps, mu, pipeline_passes_sigmas
            )
    return schedules
