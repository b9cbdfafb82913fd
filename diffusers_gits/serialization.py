"""Schedules as files: the strict reading of a scheduler config and its calibration record from a folder or a Hub
model repo, and their writing.

Only `scheduler_config.json` and `calibration_report.json` are ever read (JSON; never pickle, never code), and the
config is validated field by field before a scheduler is built.
"""

import json
import logging
import os
from pathlib import Path

from .errors import ScheduleLoadError, ScheduleNotFoundError
from .schedule_format import CONFIG_NAME, FORMAT_VERSION, REPORT_NAME, SCHEDULER_CLASSES
from .schedules import validate_schedule_table


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


def split_load_options(kwargs: dict) -> tuple[dict, dict]:
    """`from_pretrained`'s keyword arguments as (download options, the rest): `proxies` is dropped with a warning
    (huggingface_hub >= 1.0 reads HTTPS_PROXY), and what `DiffusionPipeline.from_pretrained` passes internally too."""
    kwargs = dict(kwargs)
    download = {key: kwargs.pop(key) for key in DOWNLOAD_OPTIONS if key in kwargs}
    if kwargs.pop("proxies", None):
        logger.warning("proxies= is ignored: huggingface_hub >= 1.0 takes proxies from HTTPS_PROXY / HTTP_PROXY")
    for internal in ("_from_pipeline", "_commit_hash"):
        kwargs.pop(internal, None)
    return download, kwargs


def save_record(record: dict | None, folder: str | os.PathLike) -> None:
    """Write `record` as the folder's `calibration_report.json`, or, with no record, remove an older one so that it is
    never read back as this schedule's."""
    if record is not None:
        os.makedirs(folder, exist_ok=True)
        write_record(record, folder)
    elif os.path.isfile(os.path.join(folder, REPORT_NAME)):
        os.remove(os.path.join(folder, REPORT_NAME))
