"""User errors of vidur_env: one family, and how its messages name a setting.

Every error that bad input can cause (a config field, a name, a file, a workload the simulator
cannot serve) is a :class:`ConfigError`, whatever module raises it: ``UnknownSpecError``,
``TimeModelError``, ``TraceFormatError``, ``WorkloadConfigError``, ``SessionConfigError``,
``SimulationError`` and ``EvaluationError`` are its subclasses, so a caller (the CLI) catches
one class, and a caller that wants a narrower case still can. It lives below every other module
(it imports none), so the lowest layers (hardware, time models) can raise it.

How error messages name a setting: :func:`setting` spells a config field the way the user sets
it on the interface in use (``trace_zero_tokens='drop'`` in Python, ``--trace-zero-tokens drop``
on the command line), so that advice never points at an option the user does not have.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any


class ConfigError(ValueError):
    """Bad input: a configuration value, name or file is unusable; the message names it.

    The root of every vidur_env user error (see the module docstring)."""


UNSET = object()
"""``value`` of :func:`setting` when only the setting's name is wanted."""

Spelling = Callable[[str, Any], str]
"""(config field name, value or UNSET) -> how a user writes that setting."""


def python_spelling(name: str, value: Any = UNSET) -> str:
    """The keyword-argument spelling: ``num_requests`` or ``num_requests=None``."""
    return name if value is UNSET else f"{name}={value!r}"


_SPELLING: ContextVar[Spelling] = ContextVar("setting_spelling", default=python_spelling)


def setting(name: str, value: Any = UNSET) -> str:
    """How the user sets config field ``name`` (to ``value``) on the interface in use.

    Error messages build their advice with this, so a command-line user reads ``--max-tokens``
    where a Python user reads ``max_tokens``; see :func:`spell_settings_with`.
    """
    return _SPELLING.get()(name, value)


@contextmanager
def spell_settings_with(spelling: Spelling) -> Iterator[None]:
    """Name settings with ``spelling`` in the errors raised inside the block (a CLI passes its flags)."""
    token = _SPELLING.set(spelling)
    try:
        yield
    finally:
        _SPELLING.reset(token)
