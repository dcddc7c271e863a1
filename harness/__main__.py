"""``python -m muonlab.harness``: the ``muonlab`` command line."""

import sys

from .cli import main

sys.exit(main())
