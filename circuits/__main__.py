"""`python -m circuits ...` runs the `circuits` command: the same entry point as the console script
(`circuits.cli:main`, pyproject.toml) and `python -m circuits.cli`."""

import sys

from circuits.cli import main

if __name__ == "__main__":
    sys.exit(main())
