"""A calibration's checkpoint folder: the results of the pipeline calls made so far, written atomically as each call
finishes, under a manifest that names the model, the settings and the package version they belong to.

Layout: `manifest.json` (the identity) and `entries/<digest of the job key>.pt` (`{"key": ..., "result": ...}`).
Results are tensors and plain containers, loaded with `torch.load(weights_only=True)`.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointMismatchError


logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
ENTRIES_NAME = "entries"


class CalibrationCheckpoint:
    """The checkpoint of one calibration in `directory`.

    Args:
        directory: the folder (created if needed). One calibration per folder.
        identity: what the stored results depend on, as plain JSON values: `{"package_version": ..., "model":
            {...}, "settings": {...}}` and whatever else the caller adds. A folder holding another identity is refused.
        resume: `False` deletes what the folder holds (manifest and entries) and starts over.
    """

    def __init__(self, directory: str | Path, identity: dict[str, Any], resume: bool = True):
        self.directory = Path(directory)
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        self.resume = resume

    @property
    def entries(self) -> Path:
        return self.directory / ENTRIES_NAME

    def load(self) -> dict[str, Any]:
        """Check the folder's manifest against this run's identity (writing it when there is none) and return the
        stored results by job key.

        Raises:
            CheckpointMismatchError: the folder holds a checkpoint of another model, other settings or another
                package version; the message names every difference.
        """
        manifest = self.directory / MANIFEST_NAME
        if not self.resume:
            self.clear()
        elif manifest.is_file():
            try:
                stored = json.loads(manifest.read_text())
                if not isinstance(stored, dict):
                    raise ValueError(f"expected a JSON object, got {type(stored).__name__}")
            except ValueError as error:
                logger.warning("Unreadable GITS checkpoint manifest %s (%s); starting over", manifest, error)
                self.clear()
            else:
                differences = _differences(stored, self.identity)
                if differences:
                    raise CheckpointMismatchError(
                        f"the checkpoint in {self.directory} belongs to another calibration: "
                        + "; ".join(differences)
                        + ". Pass resume=False (CLI: --no-resume) to start over there, or another checkpoint_dir",
                        differences=differences,
                    )
        if not manifest.is_file():
            _atomic_write(manifest, json.dumps(self.identity, indent=2, sort_keys=True).encode())
        results = {}
        for path in sorted(self.entries.glob("*.pt")) if self.entries.is_dir() else []:
            try:
                entry = torch.load(path, weights_only=True)
                results[entry["key"]] = entry["result"]
            except Exception as error:  # a torn or foreign file: that call is simply made again
                logger.warning("Ignoring an unreadable GITS checkpoint entry %s (%s)", path, error)
        if results:
            logger.info(
                "Resuming the GITS calibration in %s: %d pipeline calls already done", self.directory, len(results)
            )
        return results

    def store(self, key: str, result: Any) -> None:
        """Write one job's result atomically (a crash leaves either the whole entry or none)."""
        self.entries.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".pt"
        with tempfile.NamedTemporaryFile(dir=self.entries, prefix=".", suffix=".tmp", delete=False) as file:
            torch.save({"key": key, "result": result}, file)
        os.replace(file.name, self.entries / name)

    def clear(self) -> None:
        """Delete this folder's manifest and entries (nothing else in it)."""
        (self.directory / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(self.entries, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", suffix=".tmp", delete=False) as file:
        file.write(data)
    os.replace(file.name, path)


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """`name: checkpoint X, now Y` for every leaf that differs; nested dicts are compared key by key."""
    differences = []
    for name in sorted(set(stored) | set(current)):
        before, now = stored.get(name), current.get(name)
        if isinstance(before, dict) and isinstance(now, dict):
            differences += _differences(before, now, f"{prefix}{name}.")
        elif before != now:
            differences.append(f"{prefix}{name}: checkpoint {_short(before)}, now {_short(now)}")
    return differences


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
