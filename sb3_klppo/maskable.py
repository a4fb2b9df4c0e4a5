"""The set-structured policy for sb3-contrib's MaskablePPO (``pip install "vidur-env[masking]"``).

MaskablePPO accepts only subclasses of its ``MaskableActorCriticPolicy`` (whose distribution
takes action masks), so :class:`MaskableReplicaSetPolicy` mixes the networks of
:class:`sb3_klppo.policies.ReplicaSetPolicy` into that class. Use it with an env that offers
``action_masks()``, as ``VidurRouting-v0`` does::

    MaskablePPO(MaskableReplicaSetPolicy, env)
"""

from __future__ import annotations

from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

from sb3_klppo.policies import ReplicaSetLayout


class MaskableReplicaSetPolicy(ReplicaSetLayout, MaskableActorCriticPolicy):
    """:class:`sb3_klppo.policies.ReplicaSetPolicy`'s per-row scores, with masked-out rows given
    zero probability by MaskablePPO's distribution (same arguments as ReplicaSetPolicy)."""
