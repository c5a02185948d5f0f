"""LaTeX text the thesis reads: escaping, scientific notation, booktabs tabulars, the smoke marker."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

SMOKE_TEXT = "SMOKE TEST"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "η": "eta", "θ": "theta",
          "λ": "lambda", "μ": "mu", "σ": "sigma", "τ": "tau", "ω": "omega"}
_COMBINING_TILDE = "\u0303"


def escape_latex(text: str) -> str:
    r"""Escape LaTeX's special characters in plain ``text``.

    A letter followed by the combining tilde (``β̃``, U+03B2 U+0303) becomes ``$\tilde{\beta}$``: the
    thesis fonts have no combining accents, so the tilde would otherwise be lost in the PDF.
    """
    out = []
    text = str(text)
    for i, ch in enumerate(text):
        if ch == _COMBINING_TILDE:
            continue
        if i + 1 < len(text) and text[i + 1] == _COMBINING_TILDE and (ch in _GREEK or ch.isascii() and ch.isalpha()):
            out.append(f"$\\tilde{{\\{_GREEK[ch]}}}$" if ch in _GREEK else f"$\\tilde{{{ch}}}$")
        else:
            out.append(_LATEX_SPECIALS.get(ch, ch))
    return "".join(out)


def latex_sci(value: float, digits: int = 1) -> str:
    r"""``value`` in scientific notation for LaTeX text, e.g. 0.0024 → ``$2.4\times10^{-3}$`` (no exponent for
    values in [1, 10))."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    if value == 0:
        return "$0$"
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    exponent = int(exponent)
    return f"${mantissa}$" if exponent == 0 else f"${mantissa}\\times10^{{{exponent}}}$"


def _count_columns(spec: str) -> int:
    """Number of columns of a tabular column specification (l, c, r, S, p{..}, m{..}, b{..}, X)."""
    spec = re.sub(r"[@!<>]\{[^{}]*\}", "", spec)  # inter-column material and >{...}/<{...}
    spec = re.sub(r"([pmbw])\{[^{}]*\}(\{[^{}]*\})?", "c", spec)
    count = 0
    i = 0
    while i < len(spec):
        ch = spec[i]
        if ch == "*":
            m = re.match(r"\*\{(\d+)\}\{([^{}]*)\}", spec[i:])
            if not m:
                raise ValueError(f"tabular spec: cannot parse repetition in {spec!r}")
            count += int(m.group(1)) * _count_columns(m.group(2))
            i += m.end()
            continue
        if ch in "lcrSX":
            count += 1
        i += 1
    return count


def booktabs_tabular(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None,
                     escape: bool = True) -> str:
    """A booktabs ``tabular`` (no float) with one header row; cells are escaped unless ``escape=False``."""
    header = list(header)
    if not header:
        raise ValueError("header must name at least one column")
    align = align or ("l" + "r" * (len(header) - 1))
    if _count_columns(align) != len(header):
        raise ValueError(f"align {align!r} has {_count_columns(align)} columns, header has {len(header)}")
    fmt = escape_latex if escape else str
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(fmt(h) for h in header) + r" \\",
             r"\midrule"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"every row must have {len(header)} cells, got {len(row)}: {row!r}")
        lines.append(" & ".join(fmt(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def mark_smoke_table(tabular: str) -> str:
    """Insert a bold "SMOKE TEST --- not a result" row under \\toprule (and a comment line) in a tabular."""
    m = re.search(r"\\begin\{tabular\}\{((?:[^{}]|\{[^{}]*\})*)\}", tabular)
    ncols = _count_columns(m.group(1))
    marker = (rf"\multicolumn{{{ncols}}}{{c}}{{\textbf{{{SMOKE_TEXT} --- not a result}}}} \\" "\n" r"\midrule")
    return "% " + SMOKE_TEXT + ": produced by the smoke profile; not a result\n" + \
        tabular.replace(r"\toprule", r"\toprule" + "\n" + marker, 1)
