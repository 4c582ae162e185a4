"""``python -m quantrewrite``: the ``quantrewrite`` command."""

import sys

from quantrewrite.cli import main

if __name__ == "__main__":
    sys.exit(main())
