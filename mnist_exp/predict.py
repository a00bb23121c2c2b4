"""`python -m mnist_exp.predict`, as users type it and recorded runs name it; commands/predict.py does the work."""

import sys

from mnist_exp.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
