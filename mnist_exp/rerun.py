"""`python -m mnist_exp.rerun`, as users type it and recorded runs name it; commands/rerun.py does the work."""

import sys

from mnist_exp.commands.rerun import main

if __name__ == "__main__":
    sys.exit(main())
