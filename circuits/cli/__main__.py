"""`python -m circuits.cli ...` runs the `circuits` command."""

import sys

from circuits.cli import main

sys.exit(main())
