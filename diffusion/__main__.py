"""``python -m diffusion train | sample | evaluate | info`` (see :mod:`diffusion.cli`)."""

import sys

from diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
