"""The published schedules a GITS scheduler can start from, with no calibration and no network: the GITS authors'
Stable Diffusion 1.5 tables and the OSS tables for Flux.1 and Wan, as scheduler config values."""

from .schedule_format import FORMAT_VERSION
from .schedules import OSS_TABLES, PRESETS, load_gits_sd15_coeff_tables, load_published_tables, preset_schedule


#: The step counts a preset holds a row for; others stretch the nearest row (the tables' own rule).
PRESET_STEPS = range(2, 21)
#: The scheduler config each OSS table was searched with (ComfyUI's: Flux.1's dynamic shifting, Wan's shift 8).
OSS_CONFIGS = {
    "flux": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "wan": {"shift": 8.0, "use_dynamic_shifting": False},
}


def sd15_preset_config(name: str, coeff: float, solver: str) -> dict:
    """`GITSScheduler.from_preset`'s config: SD1.5's noise schedule and the authors' table for `coeff`."""
    if name != "sd15":
        flow = " (GITSFlowMatchScheduler.from_preset)" if name in PRESETS else ""
        raise ValueError(f"preset {name!r} does not exist for GITSScheduler{flow}; available: ['sd15']")
    rows = {str(k): preset_schedule(name, k, coeff).tolist() for k in PRESET_STEPS}  # refuses an unknown coeff
    return {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "solver": solver,
        "gits_sigmas": rows,
        "calibration": {
            "format_version": FORMAT_VERSION,
            "preset": name,
            "coeff": float(coeff),
            "source": load_gits_sd15_coeff_tables()["source"],
        },
    }


def oss_preset_config(name: str, solver: str, config: dict) -> dict:
    """`GITSFlowMatchScheduler.from_preset`'s config: the OSS table's scheduler config, overridden by `config`."""
    model = name.removeprefix("oss_") if name in ("oss_flux", "oss_wan") else None
    if model is None:
        vp = " (GITSScheduler.from_preset)" if name in PRESETS else ""
        raise ValueError(
            f"preset {name!r} does not exist for GITSFlowMatchScheduler{vp}; available: ['oss_flux', 'oss_wan']"
        )
    for key in ("gits_sigmas", "calibration"):
        if key in config:
            raise TypeError(f"from_preset sets {key!r} itself; got {key}={config[key]!r}")
    return {
        **OSS_CONFIGS[model],
        **config,
        "solver": solver,
        "gits_sigmas": {str(k): preset_schedule(name, k).tolist() for k in PRESET_STEPS},
        "calibration": {
            "format_version": FORMAT_VERSION,
            "preset": name,
            "source": load_published_tables()["oss"]["source"],
            "table_shift": OSS_TABLES[model]["shift"],
        },
    }
