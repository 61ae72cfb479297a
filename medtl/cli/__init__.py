"""The ``medtl`` command line: thin over the Python API."""

from medtl.cli._main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
