"""``python -m streamhost.cli``: the same entry point as the ``streamhost`` command."""

import sys

from streamhost.cli import main

sys.exit(main())
