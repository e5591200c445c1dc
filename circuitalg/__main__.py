"""``python -m circuitalg`` runs the ``circuitalg`` command."""

import sys

from circuitalg.cli import main

sys.exit(main())
