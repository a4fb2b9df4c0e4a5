"""``python -m vidur_env``: the simulator's command line."""
import sys

from vidur_env.cli import main

sys.exit(main())
