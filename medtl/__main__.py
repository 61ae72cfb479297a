"""``python -m medtl`` runs the command line."""

import sys

from medtl.cli import main

sys.exit(main())
