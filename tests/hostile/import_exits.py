"""A training script without a ``__main__`` guard: importing it exits."""

import sys

sys.exit(4)
