"""``python -m benchmarks.study``: the seed's study on real activations."""

import sys

from .run import main

sys.exit(0 if main() else 1)
