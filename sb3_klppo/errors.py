"""The root of sb3_klppo's user errors.

Bad input to the algorithm, its policies, behaviour cloning or the training config (a knob's
value, a reference policy zip, spaces a policy cannot take) raises a :class:`ConfigError`:
``KLPPOArgumentError``, ``ReplicaSetPolicyError`` and ``BehaviourCloningError`` are its
subclasses, so a caller catches one class. It imports nothing, so every module (the config
included, which reads the algorithm's registries) can raise it without an import cycle.

sb3_klppo works with any Gymnasium env and does not import vidur_env outside its job layer,
so this root is its own: vidur_env's user errors have theirs (``vidur_env.errors.ConfigError``).
Both are ``ValueError`` subclasses, which is what the training CLI catches.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """The configuration or an argument is invalid; the message names the key or argument and
    where it came from."""
