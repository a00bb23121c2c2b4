"""`python -m mnist_exp.dashboard`, as users type it and recorded runs name it; commands/dashboard.py does the work."""

import sys

from mnist_exp.commands.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
