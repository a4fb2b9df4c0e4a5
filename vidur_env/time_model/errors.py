"""Errors raised by the execution-time model (all ValueErrors, so bad input never ends in a bare traceback)."""
from __future__ import annotations


class TimeModelError(ValueError):
    """Base class of every execution-time model error."""


class ProfileDataError(TimeModelError):
    """A profiling CSV is missing, lacks a column, or has no rows for the requested model/TP."""


class OutOfGridError(TimeModelError):
    """A lookup falls outside the profiled grid and extrapolation is off."""
