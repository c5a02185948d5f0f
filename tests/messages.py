"""Matching a whole error or warning message (``pytest.raises(..., match=exact(message))``)."""
import re


def exact(message: str) -> str:
    """A regular expression that matches ``message`` and nothing longer or shorter."""
    return "^" + re.escape(message) + "$"
