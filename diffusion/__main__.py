"""``python -m diffusion train | sample | evaluate | info`` (see :mod:`diffusion.cli`)."""

import sys

if __name__ == "__main__":
    from diffusion.runs import deferred_interrupt

    with deferred_interrupt() as interrupt:  # Ctrl-C at the very start: no traceback, no abort
        from diffusion.cli import main
    if interrupt.requested:
        print("python -m diffusion: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
