"""vidur_env: a fast Vidur-faithful LLM-serving cluster simulator and a Gymnasium routing env.

Importing the package only registers the env id ``VidurRouting-v0``; the simulator and the env
are imported when used, so ``gymnasium.make("vidur_env:VidurRouting-v0", **kwargs)`` works
without a prior import (Gymnasium imports the module part of the id).
"""
import gymnasium

ENV_ID = "VidurRouting-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="vidur_env.env:VidurRoutingEnv")
