"""Matching a whole error or warning message (``pytest.raises(..., match=exact(message))``) and where a warning
points."""
import os
import re

MUTATION_RUN = "MUTANT_UNDER_TEST" in os.environ  # set by mutmut in the processes that run the tests


def exact(message: str) -> str:
    """A regular expression that matches ``message`` and nothing longer or shorter."""
    return "^" + re.escape(message) + "$"


def assert_points_at(warning, filename: str, lineno: int) -> None:
    """Assert that ``warning`` names ``filename``, line ``lineno`` (the test's own call of the code that warned).

    Skipped in a mutation run: mutmut wraps every mutated function in a trampoline whose frame, in mutmut's own
    file, shifts what a ``stacklevel`` names. Those mutants are killed by this assertion in ``make test`` and
    listed in docs/testing.md."""
    if not MUTATION_RUN:
        assert (warning.filename, warning.lineno) == (filename, lineno)
