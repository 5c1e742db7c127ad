"""``python -m captionaura``: the command line (see captionaura.cli)."""

import sys

from captionaura.cli import main

sys.exit(main())
