"""``python -m profiler`` is the ``jetson-power-profile`` command."""

import sys

from .cli import main

sys.exit(main())
