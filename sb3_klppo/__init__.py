"""KL-regularised PPO for Stable-Baselines3: ``from sb3_klppo import KLPPO``.

:class:`KLPPO` is SB3's PPO plus KL penalties, a frozen warm-start reference and an entropy floor;
:mod:`sb3_klppo.callbacks` monitors target KL; :mod:`sb3_klppo.behaviour_cloning` builds the
warm start; :mod:`sb3_klppo.policies` holds ``ReplicaSetPolicy`` (an alias of KLPPO, declared in
its class body) and :mod:`sb3_klppo.maskable` its MaskablePPO variant (needs sb3-contrib).
"""

from sb3_klppo.behaviour_cloning import BCReport, behaviour_clone
from sb3_klppo.klppo import KLPPO
from sb3_klppo.policies import ReplicaSetPolicy

__all__ = ["KLPPO", "BCReport", "ReplicaSetPolicy", "behaviour_clone"]
