"""``python -m gradprobe``."""

import sys

from gradprobe.cli.app import main

sys.exit(main())
