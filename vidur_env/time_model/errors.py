"""Errors raised by the execution-time model: vidur_env user errors (:class:`ConfigError`, a
ValueError), so bad input never ends in a bare traceback."""
from __future__ import annotations

from ..errors import ConfigError, setting


class TimeModelError(ConfigError):
    """Base class of every execution-time model error."""


class ProfileDataError(TimeModelError):
    """A profiling CSV is missing, lacks a column, or has no rows for the requested model/TP."""


class OutOfGridError(TimeModelError):
    """A lookup falls outside the profiled grid and extrapolation is off."""

    @classmethod
    def outside(cls, label: str, value: float, low: float, high: float, *, where: str = "",
                answer: str = "takes the value at the grid's nearest end (as Vidur's random forests do)") -> OutOfGridError:
        """The error for ``value`` outside ``low..high`` on ``label``'s axis; ``answer`` says what
        the source would do with extrapolation on."""
        return cls(
            f"{label}: {value:g} is outside the profiled range {low:g}..{high:g}{where}; with "
            f"{setting('extrapolate', True)} such a lookup {answer} and is counted"
        )
