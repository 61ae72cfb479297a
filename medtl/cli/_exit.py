"""The exit codes of ``medtl`` (one owner: the parser's epilog, the commands and the docs read these)."""

from __future__ import annotations

OK = 0
ATTENTION = 1  # the command finished, but part of it did not: a strategy failed, files are unusable
USAGE = 2  # argparse's own code: unknown option, missing argument, bad choice
DATA_OR_CONFIG = (
    3  # nothing (more) was run: a data, config or model-folder error named in the message
)
INTERRUPTED = 130  # Ctrl-C; finished results are kept (rerun with --resume)

HELP = f"""\
exit codes:
  {OK}    success
  {ATTENTION}    finished, but something needs attention: a strategy failed to train, or files
       could not be used (`data check`)
  {USAGE}    usage error: unknown option, missing or invalid argument
  {DATA_OR_CONFIG}    data, configuration or model-folder error (the message names the file or field)
  {INTERRUPTED}  interrupted; finished results are kept (rerun with --resume)
"""
