"""``python -m sb3_klppo``: the training command line (see :mod:`sb3_klppo.cli`)."""
import sys

from sb3_klppo.cli import main

sys.exit(main())
