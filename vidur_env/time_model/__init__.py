"""Per-iteration execution time of one replica, keyed and composed the way Vidur does.

One interface (:class:`ExecutionTimeModel.iteration_time`), three sources:
:func:`builtin_time_model` (packaged coefficients fitted to Vidur's real profiling data),
:func:`forest_time_model` (random forests fitted on Vidur-format CSVs, as Vidur main does) and
:func:`profiled_time_model` (interpolation over the same CSVs). See ``base`` for the keying
rules (``"vidur"`` main branch, ``"vidur_pypi"`` PyPI 0.0.26 build).
"""
from .base import DEFAULT_KEYING, KEYINGS, ExecutionTimeModel, VidurOverheads
from .builtin import BuiltinTimeModel, builtin_time_model
from .errors import OutOfGridError, ProfileDataError, TimeModelError
from .forest import FOREST_PARAMS, ForestTimeModel, forest_time_model
from .profiled import ProfiledTimeModel, profiled_time_model

PROFILE_FITS = ("forest", "interpolate")
"""How profiling CSVs become times (``ClusterConfig.profile_fit``, ``--profile-fit``): random
forests as Vidur main fits them, or interpolation between the profiled points."""
DEFAULT_PROFILE_FIT = "forest"

__all__ = [
    "DEFAULT_KEYING",
    "DEFAULT_PROFILE_FIT",
    "FOREST_PARAMS",
    "KEYINGS",
    "PROFILE_FITS",
    "BuiltinTimeModel",
    "ExecutionTimeModel",
    "ForestTimeModel",
    "OutOfGridError",
    "ProfileDataError",
    "ProfiledTimeModel",
    "TimeModelError",
    "VidurOverheads",
    "builtin_time_model",
    "forest_time_model",
    "profiled_time_model",
]
