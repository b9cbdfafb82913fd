"""Sharing schedules: strict JSON loading, Hub push with a model card and plot, listing, and the calibration cache.

Only `scheduler_config.json` is ever read from the Hub (JSON; never pickle, never code), and it is validated field by
field before a scheduler is built. Cache entries are written to a temporary folder beside their final place and
renamed into it, so a killed process never leaves an entry that loads as valid.
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
from .errors import ScheduleLoadError, ScheduleNotFoundError
from .noise import flow_match_config, is_flow_scheduler_config
from .schedules import validate_schedule_table
from .settings import CARD_FIELDS


CONFIG_NAME = "scheduler_config.json"
#: The full calibration record (settings, model calls, timings, report), beside the config: the config keeps a short
#: summary, so that a stock scheduler built from it (`EulerDiscreteScheduler.from_config`) warns about a few lines.
REPORT_NAME = "calibration_report.json"
SCHEDULER_CLASSES = ("GITSScheduler", "GITSFlowMatchScheduler")
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


def validate_schedule_config(config: dict, source: str) -> None:
    """Check a GITS scheduler config read from `source`; raise `ScheduleLoadError` naming the source and field."""
    if not isinstance(config, dict):
        raise ScheduleLoadError(f"{source}: {CONFIG_NAME} is not a JSON object", source=source)
    if config.get("_class_name") not in SCHEDULER_CLASSES:
        raise ScheduleLoadError(
            f"{source}: field '_class_name' is {config.get('_class_name')!r}, expected one of {SCHEDULER_CLASSES}",
            source=source,
            field="_class_name",
        )
    table = config.get("gits_sigmas")
    if table is not None and not isinstance(table, dict):
        raise ScheduleLoadError(f"{source}: field 'gits_sigmas' must be an object", source=source, field="gits_sigmas")
    try:
        validate_schedule_table(table or {})
    except ValueError as error:
        raise ScheduleLoadError(f"{source}: {error}", source=source, field="gits_sigmas") from None
    calibration = config.get("calibration")
    if calibration is not None:
        version = calibration.get("format_version") if isinstance(calibration, dict) else None
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ScheduleLoadError(
                f"{source}: field 'calibration.format_version' is {version!r}; this diffusers-gits reads format "
                f"{FORMAT_VERSION} or older (upgrade the package for newer schedules)",
                source=source,
                field="calibration.format_version",
            )


def read_schedule_config(path: str | Path, source: str) -> dict:
    """Read and validate a scheduler config file."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScheduleLoadError(f"{source}: {CONFIG_NAME} is not readable JSON ({error})", source=source) from None
    validate_schedule_config(config, source)
    return config


#: Download options `from_pretrained` passes on to `huggingface_hub.hf_hub_download`.
DOWNLOAD_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "user_agent")


def _fetch_file(
    repo_or_dir: str | Path, name: str, subfolder: str | None, missing_ok: bool, **download
) -> Path | None:
    """The path of file `name` of a local folder or a Hub model repo (downloaded); `None` when it does not exist and
    `missing_ok`."""
    source = f"{repo_or_dir}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    local = Path(repo_or_dir) / (subfolder or "") / name
    if local.is_file():
        return local
    if Path(repo_or_dir).is_dir():
        if missing_ok:
            return None
        raise ScheduleNotFoundError(f"{source}: no {name} in that folder", source=source)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(str(repo_or_dir), name, subfolder=subfolder, **download))
    except EntryNotFoundError as error:
        if missing_ok and not isinstance(error, LocalEntryNotFoundError):
            return None
        if isinstance(error, LocalEntryNotFoundError):
            raise ScheduleLoadError(
                f"{source}: not in the local cache and the Hub cannot be reached (offline mode?): {error}",
                source=source,
            ) from error
        raise ScheduleNotFoundError(f"{source}: no {name} there: {error}", source=source) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ScheduleNotFoundError(f"{source}: not found on the Hub: {error}", source=source) from error
    except Exception as error:  # HTTP status, transport (the HTTP client's own types) and file errors alike
        raise ScheduleLoadError(f"{source}: could not download {name}: {error}", source=source) from error


def fetch_schedule_config(repo_or_dir: str | Path, subfolder: str | None = None, **download) -> dict:
    """The validated config of a schedule in a local folder or a Hub model repo (only the JSON file is fetched);
    `download` holds `DOWNLOAD_OPTIONS`."""
    path = _fetch_file(repo_or_dir, CONFIG_NAME, subfolder, False, **download)
    source = f"{repo_or_dir}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    revision = download.get("revision")
    return read_schedule_config(path, source + (f" at revision {revision!r}" if revision else ""))


def fetch_calibration_record(repo_or_dir: str | Path, subfolder: str | None = None, **download) -> dict | None:
    """The calibration record saved beside a schedule (`calibration_report.json`); `None` where there is none
    (presets, uncalibrated schedulers)."""
    path = _fetch_file(repo_or_dir, REPORT_NAME, subfolder, True, **download)
    return None if path is None else read_calibration_record(path)


def read_calibration_record(path: str | Path) -> dict:
    """Read a `calibration_report.json`; raise `ScheduleLoadError` when it is not a JSON object."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScheduleLoadError(f"{path}: not readable JSON ({error})", source=str(path), field=REPORT_NAME) from None
    if not isinstance(record, dict):
        raise ScheduleLoadError(f"{path}: not a JSON object", source=str(path), field=REPORT_NAME)
    return record


def _steps(config: dict) -> list[int]:
    return sorted(int(k) for k in config.get("gits_sigmas") or {})


def closest_text(closest: dict | None) -> str:
    """`closest_baseline` as the report tables print it: "beta (0.812)", marked where it is from the search noises."""
    if not closest:
        return "-"
    where = ", search noises" if closest.get("on") == "search noises" else ""
    return f"{closest['name']} ({closest['ratio']:.3f}{where})"


def model_card(
    config: dict, repo_id: str | None = None, subfolder: str | None = None, record: dict | None = None
) -> str:
    """README.md with Hub metadata for a calibrated schedule (its scheduler config and calibration record): settings,
    schedules and the calibration report."""
    meta = record or config.get("calibration") or {}
    class_name = config["_class_name"]
    base_model = meta.get("model")
    front = ["---", "library_name: diffusers", "tags:", "- gits", "- scheduler", "- diffusers-gits"]
    if base_model and not Path(str(base_model)).is_absolute():
        front.append(f"base_model: {base_model}")
    front.append("---")
    location = f"`{repo_id}`" + (f", subfolder `{subfolder}`" if subfolder else "") if repo_id else "this folder"
    load_args = f'"{repo_id}"' + (f', subfolder="{subfolder}"' if subfolder else "") if repo_id else '"path/to/folder"'
    lines = front + [
        "",
        f"# GITS schedules for {base_model or 'a diffusers model'}",
        "",
        "Time schedules found by GITS (Chen et al., ICML 2024, arXiv 2405.11326) on the model's own sampling "
        f"trajectories with [diffusers-gits](https://pypi.org/project/diffusers-gits/). Stored in {location}.",
        "",
        "```python",
        f"from diffusers_gits import {class_name}",
        f"pipe.scheduler = {class_name}.from_pretrained({load_args})",
        "```",
        "",
        "## Calibration settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in (
        "pipeline_class",
        "pipe_kwargs",
        "family",
        "mu",
        "grid",
        *CARD_FIELDS,
        "model_calls",
        "package_version",
    ):
        if key in meta:
            lines.append(f"| {key} | `{json.dumps(meta[key])}` |")
    convention = "flow sigmas, 1 to 0, shifted" if is_flow_scheduler_config(config) else "Karras / VE convention"
    lines += ["", f"## Schedules (sigmas, {convention})", "", "| steps | sigmas |", "|---|---|"]
    for k in _steps(config):
        lines.append(f"| {k} | {', '.join(f'{s:.4g}' for s in config['gits_sigmas'][str(k)])} |")
    report = meta.get("report") or {}
    if any("gits_error" in entry for entry in report.values()):
        lines += [
            "",
            "## Calibration report (held-out pooled RMSE to the teacher)",
            "",
            "| steps | chosen | its error | default schedule | best baseline (chosen / it) | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for k, entry in sorted(report.items(), key=lambda item: int(item[0])):
            if "gits_error" in entry:
                default = entry.get("default_error")
                closest = entry.get("closest_baseline")
                versus = closest_text(closest)
                lines.append(
                    f"| {k} | {entry['chosen']} | {entry['gits_error']:.4g} | "
                    f"{'-' if default is None else f'{default:.4g}'} | {versus} | {entry.get('summary', '')} |"
                )
    regularity = meta.get("regularity")
    if regularity:
        lines += [
            "",
            f"## Trajectory regularity of the model ({regularity['num_trajectories']} teacher trajectories)",
            "",
            "Why one calibrated schedule serves every prompt: how straight and how alike the model's sampling "
            "trajectories are (`diffusers_gits.geometry`; `diffusers-gits analyze` measures more).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| deviation from the chord held by its top 1 / 2 / 3 principal directions | "
            f"{regularity['deviation_pca_top1']:.3f} / {regularity['deviation_pca_top2']:.3f} / "
            f"{regularity['deviation_pca_top3']:.3f} |",
            f"| largest distance from the chord (fraction of its length) | {regularity['max_deviation']:.4f} "
            f"(spread {regularity['max_deviation_spread']:.4f}) |",
            f"| deviation profile similarity, mean / lowest (regularity score) | "
            f"{regularity['profile_similarity']:.4f} / {regularity['regularity_score']:.4f} |",
        ]
    lines += ["", "![schedules](schedules.png)", ""]
    return "\n".join(lines)


def write_config(config: dict, folder: str | Path) -> Path:
    """Write a scheduler config as `folder/scheduler_config.json`, as diffusers' `save_config` does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def write_record(record: dict, folder: str | Path) -> Path:
    """Write a calibration record as `folder/calibration_report.json`."""
    path = Path(folder) / REPORT_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def write_schedule_folder(
    config: dict,
    folder: str | Path,
    repo_id: str | None = None,
    subfolder: str | None = None,
    record: dict | None = None,
) -> Path:
    """Write a schedule's `scheduler_config.json`, its `calibration_report.json` (when it has a record), the model card
    `README.md` and, where matplotlib is installed, `schedules.png` into `folder`."""
    from .plotting import plots_available, save_schedule_plot

    folder = Path(folder)
    write_config(config, folder)
    if record is not None:
        write_record(record, folder)
    (folder / "README.md").write_text(model_card(config, repo_id, subfolder, record))
    if plots_available():
        save_schedule_plot({k: config["gits_sigmas"][str(k)] for k in _steps(config)}, folder / "schedules.png")
    else:
        logger.info("schedules.png left out: plots need matplotlib (pip install 'diffusers-gits[plots]')")
    return folder


def push_schedule(
    config: dict,
    repo_id: str,
    subfolder: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    record: dict | None = None,
) -> str:
    """Upload the schedule folder (config, calibration record, card, plot) to a Hub model repo, creating it if needed;
    return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_schedule_folder(config, tmp, repo_id, subfolder, record)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            path_in_repo=subfolder,
            commit_message=commit_message or f"Upload GITS schedule{f' to {subfolder}' if subfolder else ''}",
            revision=revision,
            create_pr=create_pr,
        )
    return str(info.commit_url)


def list_schedules(
    repo_or_dir: str | Path, revision: str | None = None, token: str | bool | None = None
) -> list[dict]:
    """What a repo or folder holds: one entry per schedule folder with its subfolder, steps, model and solver."""
    if Path(repo_or_dir).is_dir():
        root = Path(repo_or_dir)
        files = [str(p.relative_to(root)) for p in root.rglob(CONFIG_NAME)]
    else:
        from huggingface_hub import HfApi

        files = [
            f
            for f in HfApi(token=token).list_repo_files(str(repo_or_dir), revision=revision)
            if f.endswith(CONFIG_NAME)
        ]
    entries = []
    for name in sorted(files):
        subfolder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        config = fetch_schedule_config(repo_or_dir, subfolder=subfolder, revision=revision, token=token)
        meta = config.get("calibration") or {}
        entries.append(
            {
                "subfolder": subfolder,
                "steps": sorted(int(k) for k in config.get("gits_sigmas") or {}),
                "model": meta.get("model"),
                "solver": config.get("solver"),
                "pipe_kwargs": meta.get("pipe_kwargs"),
            }
        )
    return entries


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
