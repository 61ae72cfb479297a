"""``python -m medtl`` runs the command line."""

from medtl.cli import entry

entry()
