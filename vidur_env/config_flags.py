"""Command-line flags derived from config dataclass fields: name, type, help and default.

A :class:`FieldFlag` in a list turns one field of a dataclass (``ClusterConfig``,
``ReplicaConfig``, ``WorkloadConfig``) into one flag, so a knob has the same name in the env's
keyword arguments, in config files and on the command line:

- flag: ``--`` and the field name with dashes (``tensor_parallel`` -> ``--tensor-parallel``);
  older spellings stay accepted as ``aliases``, and an error message repeats the spelling typed;
- ``dest``: the field name, so :func:`vidur_env.cli.flag_spelling` names the flag in advice;
- type: from the annotation: ``int``, ``float`` and ``str`` parse as such, ``bool`` is a pair
  ``--x/--no-x``, ``Optional[X]`` parses as ``X``; anything else (``int | str``) needs ``parse``;
- choices: ``choices``, read from the registry that owns the names (never a copied list);
- help: the field's attribute docstring (the string right below it, read from the source with
  :mod:`ast`, as ``sb3_klppo/config.py`` does), then any command-line ``note``, then the default;
- default: the field's value in the object the flags start from (on the CLI, the scenario
  ``--scenario`` names), so a flag given overrides it and one left out keeps it.

How a new field becomes a flag: give it a docstring in its dataclass and add
``FieldFlag("its_name")`` to the list of its dataclass in :mod:`vidur_env.cli`
(``CLUSTER_FLAGS``, ``REPLICA_FLAGS`` or ``WORKLOAD_FLAGS``), with ``choices=`` when a registry
bounds its values. ``simulate`` and ``evaluate`` then offer it and copy it into the scenario;
nothing else changes.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

DEFAULT_NOTE = " (default: %(default)s)"
"""Appended to every derived flag's help: the value the flag starts from (the scenario's)."""

TYPED_SPELLINGS = "typed_spellings"
"""Namespace attribute: for a flag with aliases that was given, the spelling the user typed."""

METAVARS = {int: "N", float: "X", str: "TEXT"}
"""Placeholder of a flag's value in ``--help`` by type, unless the flag names its own."""

RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
"""A Sphinx cross-reference such as ``:class:`vidur_env.x.Y```, shown in help as its target."""


@dataclass(frozen=True)
class FieldFlag:
    """One dataclass field offered as a flag; everything not given here comes from the field."""

    name: str
    """The field; the flag is ``--`` and the name with dashes."""
    aliases: tuple[str, ...] = ()
    """Other accepted spellings (older flag names), shown beside the flag in ``--help``."""
    choices: Sequence[str] | None = None
    """The values allowed, from the registry that owns them."""
    metavar: str | None = None
    """Placeholder in ``--help`` (default: by type, see :data:`METAVARS`)."""
    parse: Callable[[str], Any] | None = None
    """argparse type for an annotation that is not a plain or optional int/float/str."""
    note: str = ""
    """What the flag does beyond setting the field, on the command line only."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each documented field of dataclass ``cls``: its attribute docstring on one line, with
    Sphinx markup (````x````, ``:class:`x```) reduced to plain text."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            text = " ".join(following.value.value.split())
            docs[node.target.id] = RST_ROLE.sub(r"\1", text).replace("``", "")
    return docs


def flag_help(cls: type, flag: FieldFlag) -> str:
    """The help of ``flag``: the field's docstring, the flag's note, the default (``%`` escaped)."""
    doc = field_docs(cls).get(flag.name)
    if not doc:
        raise TypeError(f"{cls.__name__}.{flag.name} has no docstring to be the help of {flag.flag}")
    text = f"{doc} {flag.note}" if flag.note else doc
    return text.replace("%", "%%") + DEFAULT_NOTE


def optional_inner(annotation: Any) -> Any:
    """``X`` for ``Optional[X]`` / ``X | None``; any other annotation unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


class StoreRememberingSpelling(argparse.Action):
    """Store the value and remember which of the flag's spellings was typed, so that an error
    message about the field names the flag the way the user wrote it (``--tp`` or
    ``--tensor-parallel``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, TYPED_SPELLINGS, {**typed_spellings(namespace), self.dest: option_string})


def typed_spellings(namespace: argparse.Namespace) -> Mapping[str, str]:
    """``dest`` -> the spelling the user typed, for the given flags that have aliases."""
    return getattr(namespace, TYPED_SPELLINGS, {})


def add_field_flags(group: Any, base: Any, flags: Sequence[FieldFlag]) -> None:
    """Add ``flags`` (fields of ``base``'s dataclass) to an argparse parser or group, each
    defaulting to its field's value in ``base``."""
    cls = type(base)
    hints = typing.get_type_hints(cls)
    for flag in flags:
        kind = optional_inner(hints[flag.name])
        spec: dict[str, Any] = {"dest": flag.name, "default": getattr(base, flag.name), "help": flag_help(cls, flag)}
        if kind is bool:
            spec["action"] = argparse.BooleanOptionalAction
        else:
            if flag.parse is None and kind not in METAVARS:
                raise TypeError(f"{cls.__name__}.{flag.name}: a {kind} field needs FieldFlag(parse=...)")
            spec["type"] = flag.parse or kind
            spec["choices"] = flag.choices
            spec["metavar"] = None if flag.choices else flag.metavar or METAVARS.get(kind)
            if flag.aliases:
                spec["action"] = StoreRememberingSpelling
        group.add_argument(flag.flag, *flag.aliases, **spec)


def field_values(args: argparse.Namespace, flags: Sequence[FieldFlag]) -> dict[str, Any]:
    """The parsed values of ``flags``, by field name (for ``dataclasses.replace``)."""
    return {flag.name: getattr(args, flag.name) for flag in flags}
