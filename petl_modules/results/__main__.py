"""``python -m petl_modules.results``."""

import sys

from petl_modules.results.cli import main

sys.exit(main())
