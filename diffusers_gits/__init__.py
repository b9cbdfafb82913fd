"""diffusers-gits: GITS time schedules calibrated on any diffusers pipeline."""

from ._version import __version__
from .analysis import analyze
from .calibration import calibrate  # also registers the machinery behind `from_calibration`
from .compare import compare_schedules
from .errors import (
    CalibrationError,
    CheckpointMismatchError,
    ScheduleLoadError,
    ScheduleNotFoundError,
    WrongFamilyError,
)
from .model_card import list_schedules
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
    "analyze",
    "calibrate",
    "compare_schedules",
    "list_schedules",
]
