"""``python -m diffusion train | sample | evaluate | info`` (see :mod:`diffusion.cli`)."""

import sys

if __name__ == "__main__":
    try:
        from diffusion.cli import main
    except KeyboardInterrupt:  # Ctrl-C at the very start: no traceback either
        print("python -m diffusion: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
