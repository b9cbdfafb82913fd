"""diffusers-gits: GITS time schedules calibrated on any diffusers pipeline."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CalibrationError,
    CheckpointMismatchError,
    ScheduleLoadError,
    ScheduleNotFoundError,
    WrongFamilyError,
)
from .scheduling_gits import GITSFlowMatchScheduler, GITSScheduler, GITSSchedulerOutput  # noqa: E402


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
]
