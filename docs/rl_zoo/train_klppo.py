"""RL Zoo's ``train.py`` with KLPPO registered as ``--algo klppo`` (see docs/rl_zoo.md)."""
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
from rl_zoo3.train import train
from rl_zoo3.utils import ALGOS

from sb3_klppo import KLPPO

ALGOS["klppo"] = KLPPO  # the zoo builds --algo's choices and the model from this dict
HYPERPARAMS_SAMPLER["klppo"] = HYPERPARAMS_SAMPLER["ppo"]  # for -optimize: PPO's search space
HYPERPARAMS_CONVERTER["klppo"] = HYPERPARAMS_CONVERTER["ppo"]  # KLPPO takes every PPO argument

if __name__ == "__main__":
    train()
