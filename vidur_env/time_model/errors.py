"""Errors raised by the execution-time model: vidur_env user errors (:class:`ConfigError`, a
ValueError), so bad input never ends in a bare traceback."""
from __future__ import annotations

from ..errors import ConfigError


class TimeModelError(ConfigError):
    """Base class of every execution-time model error."""


class ProfileDataError(TimeModelError):
    """A profiling CSV is missing, lacks a column, or has no rows for the requested model/TP."""


class OutOfGridError(TimeModelError):
    """A lookup falls outside the profiled grid and extrapolation is off."""
