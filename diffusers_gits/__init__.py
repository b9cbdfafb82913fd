"""diffusers-gits: GITS time schedules calibrated on any diffusers pipeline."""

from ._version import __version__
from .calibration import calibrate  # also registers the machinery behind `from_calibration`
from .errors import (
    CalibrationError,
    CheckpointMismatchError,
    ScheduleLoadError,
    ScheduleNotFoundError,
    WrongFamilyError,
)
from .scheduling_gits import GITSFlowMatchScheduler, GITSScheduler, GITSSchedulerOutput


__all__ = [
    "CalibrationError",
    "CheckpointMismatchError",
    "GITSFlowMatchScheduler",
    "GITSScheduler",
    "GITSSchedulerOutput",
    "ScheduleLoadError",
    "ScheduleNotFoundError",
    "WrongFamilyError",
    "__version__",
    "calibrate",
]
