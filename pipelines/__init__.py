"""The entry points (``python -m pipelines.STAGE``).

``python -m pipelines.STAGE --help`` is answered here, before the stage's module (and so Beam
and TensorFlow) is imported: from ``pipelines/help/STAGE.txt``, the help argparse renders for
that stage, written by ``python -m pipelines.reference --write-help`` and kept current by a test.
"""

from __future__ import annotations

import os as _os
import sys as _sys


def _answer_help() -> None:
    """Print a stage's stored help and exit when the command line is ``-m pipelines.STAGE``
    with ``--help`` (or ``-h``) among its arguments; otherwise do nothing."""
    argv = list(getattr(_sys, "orig_argv", ()))
    if "-m" not in argv:
        return
    at = argv.index("-m")
    if at + 1 >= len(argv) or not argv[at + 1].startswith(__name__ + "."):
        return
    if not any(arg in ("-h", "--help") for arg in argv[at + 2 :]):
        return
    stage = argv[at + 1].split(".", 1)[1]
    path = _os.path.join(_os.path.dirname(__file__), "help", f"{stage}.txt")
    if not _os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        _sys.stdout.write(handle.read())
    _sys.stdout.flush()
    raise SystemExit(0)


_answer_help()
