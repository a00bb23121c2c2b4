"""`python -m mnist_exp.runs`, as users type it and recorded runs name it; commands/runs.py does the work."""

import sys

from mnist_exp.commands.runs import main

if __name__ == "__main__":
    sys.exit(main())
