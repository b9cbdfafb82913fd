"""The calibration cache: a model's fingerprint, the key of a calibration, and entries written atomically.

Entries are written to a temporary folder beside their final place and renamed into it, so a killed process never
leaves an entry that loads as valid.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import ScheduleLoadError
from .noise import flow_match_config, is_flow_scheduler_config
from .schedule_format import CONFIG_NAME, REPORT_NAME
from .serialization import read_calibration_record, read_schedule_config, write_config, write_record


logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`$DIFFUSERS_GITS_CACHE`, else `$HF_HOME/diffusers_gits`, else `~/.cache/huggingface/diffusers_gits`."""
    if os.environ.get("DIFFUSERS_GITS_CACHE"):
        return Path(os.environ["DIFFUSERS_GITS_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "diffusers_gits"


#: Tensor values sampled per parameter or buffer, evenly spread over it, beside its exact float64 sum and sum of squares.
FINGERPRINT_SAMPLES = 256


def _tensor_digest(digest, name: str, tensor: torch.Tensor) -> None:
    """Feed one tensor's name, shape, dtype, moments and an even sample of its values into `digest`.

    Hashing every weight of a multi-GB model would cost more than a cache hit saves. The sum and sum of squares
    (computed where the tensor lives, in float64) change with any weight that changes; the strided sample catches
    edits that keep both moments.
    """
    values = tensor.detach().flatten()
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    if values.numel() == 0:
        return
    if not (values.is_floating_point() or values.is_complex()):
        values = values.to(torch.float64)
    moments = torch.stack([values.double().sum(), values.double().square().sum()])
    stride = max(1, values.numel() // FINGERPRINT_SAMPLES)
    sample = torch.cat([values[::stride][:FINGERPRINT_SAMPLES], values[-1:]]).double()
    digest.update(np.ascontiguousarray(torch.cat([moments, sample]).cpu().numpy()).tobytes())


def _public_config(config) -> dict | None:
    """A component's config as plain JSON values, without bookkeeping keys (paths, library versions)."""
    if config is None:
        return None
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {
        key: jsonable(value)
        for key, value in config.items()
        if not key.startswith("_") and key not in ("transformers_version", "diffusers_version")
    }


def component_fingerprints(pipe) -> dict[str, dict]:
    """What identifies each component of `pipe` but its scheduler: class, config, and a digest of its tensors.

    Torch modules contribute every parameter and every buffer, persistent or not (a buffer set in `__init__` from the
    config changes the model's output as much as a weight does). Tokenizers contribute a digest of their vocabulary,
    other objects one of the tensors they hold as attributes.
    The scheduler is left out: the caller keys the model's noise schedule, whichever scheduler class carries it.
    """
    components = getattr(pipe, "components", {}) or {}
    fingerprints = {}
    for name in sorted(components):
        component = components[name]
        if name == "scheduler" or component is None or isinstance(component, (str, int, float, bool)):
            continue
        entry = {"class": type(component).__name__, "config": _public_config(getattr(component, "config", None))}
        if isinstance(component, torch.nn.Module):
            digest = hashlib.sha256()
            for key, tensor in component.named_parameters():
                _tensor_digest(digest, f"parameter.{key}", tensor)
            for key, tensor in component.named_buffers():
                _tensor_digest(digest, f"buffer.{key}", tensor)
            entry["tensors"] = digest.hexdigest()
        elif hasattr(component, "get_vocab"):
            vocab = json.dumps(sorted(component.get_vocab().items()))
            entry["vocab"] = hashlib.sha256(vocab.encode()).hexdigest()
            entry["model_max_length"] = getattr(component, "model_max_length", None)
        else:  # any other object: the tensors it holds (a custom component, an exact model)
            digest = hashlib.sha256()
            for key, value in sorted(vars(component).items()) if hasattr(component, "__dict__") else []:
                if isinstance(value, torch.Tensor):
                    _tensor_digest(digest, f"attribute.{key}", value)
            entry["tensors"] = digest.hexdigest()
        fingerprints[name] = entry
    return fingerprints


def jsonable(value: Any) -> Any:
    """`value` as plain JSON values; tensors become their digest."""
    if isinstance(value, torch.Tensor):
        return {"tensor_sha256": hashlib.sha256(value.detach().float().cpu().numpy().tobytes()).hexdigest()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def model_identity(pipe) -> dict[str, Any]:
    """Everything about the model that changes a calibration's result, as plain JSON values: the pipeline class and
    name, every component but the scheduler (`component_fingerprints`: class, config and tensors), and the noise
    schedule and prediction type, whichever scheduler class (GITS included) currently carries them."""
    config = dict(pipe.scheduler.config)
    if is_flow_scheduler_config(config):
        config = flow_match_config(config)  # Wan's UniPC and the GITS scheduler installed in its place alike
        keys = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "time_shift_type")
        neutral = {"shift_terminal": None}
    else:
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        keys += ("rescale_betas_zero_snr",)
        neutral = {"snr_shift_scale": 1.0}  # CogVideoX's DDIM rescales alphas_cumprod with it
    noise_schedule = {key: config.get(key) for key in keys}
    # Keys only some schedulers have count where they change the schedule, and leave every other model's key as it was.
    noise_schedule.update({key: config[key] for key, value in neutral.items() if config.get(key, value) != value})
    model = getattr(pipe, "name_or_path", None) or (getattr(pipe, "config", None) or {}).get("_name_or_path")
    return {
        "model": str(model) if model is not None else None,
        "components": component_fingerprints(pipe),
        "pipeline_class": type(pipe).__name__,
        "noise_schedule": jsonable(noise_schedule),
        "prediction_type": config.get("prediction_type"),
    }


def calibration_key(model: dict[str, Any], settings: dict[str, Any]) -> str:
    """A key for everything that changes a calibration's result: the model (`model_identity`), the calibration
    settings and the package version."""
    payload = {"model": model, "settings": jsonable(settings), "package_version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cache_load(key: str, cache_dir: Path | None = None) -> tuple[dict, dict | None] | None:
    """The cached scheduler config and calibration record for `key`, or `None`; an unreadable or invalid entry is
    skipped with a warning."""
    path = (cache_dir or default_cache_dir()) / key / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = read_schedule_config(path, f"cache entry {path.parent}")
        record_path = path.parent / REPORT_NAME
        return config, read_calibration_record(record_path) if record_path.is_file() else None
    except ScheduleLoadError as error:
        logger.warning("Ignoring an unusable GITS cache entry (it will be replaced): %s", error)
        return None


def cache_store(key: str, config: dict, record: dict | None = None, cache_dir: Path | None = None) -> Path:
    """Write a scheduler config (and its calibration record) under `key` atomically: a temporary folder beside the
    entry, then a rename."""
    root = cache_dir or default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        write_config(config, tmp)
        if record is not None:
            write_record(record, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
