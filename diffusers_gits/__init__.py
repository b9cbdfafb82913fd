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
from .scheduling_gits import GITSScheduler
from .scheduling_gits_common import GITSSchedulerOutput
from .scheduling_gits_flow_match import GITSFlowMatchScheduler


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
