"""``python -m zeus``: the same as the ``zeus`` command."""

import sys

from zeus.cli import main

sys.exit(main())
