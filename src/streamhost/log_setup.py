"""One way to send streamhost's log records to stderr, shared by the model server and its engine-core process.

Each process names itself in the prefix, so interleaved lines from the two can be told apart.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str, prefix: str = "streamhost") -> None:
    """Route the ``streamhost`` loggers to stderr at ``level``, each line prefixed ``[prefix]``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[{prefix}] %(levelname)s %(message)s"))
    root = logging.getLogger("streamhost")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
