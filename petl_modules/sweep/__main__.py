"""``python -m petl_modules.sweep``."""

import sys

from petl_modules.sweep.cli import main

sys.exit(main())
