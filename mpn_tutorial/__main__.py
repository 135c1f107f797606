"""``python -m mpn_tutorial COMMAND``: the command line (``tools/cli.py``)."""

import sys

from mpn_tutorial.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
