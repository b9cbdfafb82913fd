"""Exceptions raised by diffusers-gits. Each subclasses the builtin a caller would already catch."""


class CalibrationError(RuntimeError):
    """A calibration run produced unusable data, e.g. NaN or Inf in the model output.

    Attributes:
        grid_step (`int` | `None`): the fine-grid step at which it happened.
        sigma (`float` | `None`): the noise level of that step.
    """

    def __init__(self, message: str, grid_step: int | None = None, sigma: float | None = None):
        super().__init__(message)
        self.grid_step = grid_step
        self.sigma = sigma


class ScheduleLoadError(ValueError):
    """A schedule could not be loaded: unreadable, failed validation, or could not be fetched.

    Attributes:
        source (`str` | `None`): the repo or folder (and subfolder / revision) it came from.
        field (`str` | `None`): the config field that failed validation, when one did.
    """

    def __init__(self, message: str, source: str | None = None, field: str | None = None):
        super().__init__(message)
        self.source = source
        self.field = field


class ScheduleNotFoundError(ScheduleLoadError):
    """The repo, revision or file of a schedule does not exist (as opposed to one that could not be reached or read).

    A calibration that looks for a shared result on the Hub calibrates only on this error; any other raises.
    """


class CheckpointMismatchError(ValueError):
    """A checkpoint folder holds a calibration of another model, other settings or another package version.

    Attributes:
        differences (`list[str]`): one `name: checkpoint X, now Y` line per differing value.
    """

    def __init__(self, message: str, differences: list[str] | None = None):
        super().__init__(message)
        self.differences = differences or []


class WrongFamilyError(AttributeError, ValueError):
    """A pipeline asked a GITS scheduler for what only the other model family has (VP vs flow matching).

    An `AttributeError`, so `hasattr(scheduler, name)` answers `False` as pipelines that probe for VP attributes
    expect; a `ValueError` like the package's other refusals.
    """
