"""Per-iteration execution time of one replica, keyed and composed the way Vidur does.

One interface (:class:`ExecutionTimeModel.iteration_time`), two sources:
:func:`builtin_time_model` (packaged coefficients fitted to Vidur's real profiling data) and
:func:`profiled_time_model` (interpolation over Vidur-format CSVs). See ``base`` for the keying
rules (``"vidur"`` main branch, ``"vidur_pypi"`` PyPI 0.0.26 build).
"""
from .base import DEFAULT_KEYING, KEYINGS, ExecutionTimeModel, VidurOverheads
from .builtin import BuiltinTimeModel, builtin_time_model
from .errors import OutOfGridError, ProfileDataError, TimeModelError
from .profiled import ProfiledTimeModel, profiled_time_model

__all__ = [
    "DEFAULT_KEYING",
    "KEYINGS",
    "BuiltinTimeModel",
    "ExecutionTimeModel",
    "OutOfGridError",
    "ProfileDataError",
    "ProfiledTimeModel",
    "TimeModelError",
    "VidurOverheads",
    "builtin_time_model",
    "profiled_time_model",
]
