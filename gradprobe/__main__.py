"""``python -m gradprobe``."""

import sys

from gradprobe.cli import main

sys.exit(main())
