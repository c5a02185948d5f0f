#!/usr/bin/env python3
"""Check a built thesis PDF the way an examiner would look at it.

Usage::

    python tools/thesis_check.py [--pdf thesis/build/thesis.pdf] [--min-pt 7] [--pages 30 150]

Checks (each failure is listed; exit status 1 if any):

1. every page renders (``pdftoppm`` at a low resolution gives one image per page);
2. the text has no ``??`` (an unresolved reference or citation);
3. every font is embedded, and embedded with the type of its font file (``pdffonts``);
4. no text in a figure is smaller than ``--min-pt`` at print size: for every figure the thesis includes,
   the size of each text item in the figure PDF (font size × text matrix × transformation matrix) times
   the scale at which ``\\ProfFig`` placed it (written to the LaTeX log as ``ProfFig: <name> scale=<s>``).
   Sub- and superscripts of maths (matplotlib sets them at :data:`SCRIPT_RATIO` of their base, as TeX
   does) are held to ``SCRIPT_RATIO × --min-pt``; a size counts as a script when the size it is the
   script of also occurs in the figure;
5. the page count lies within ``--pages``.

The figure PDFs are read from the folder named by ``\\FigDir`` in ``<build>/profile.tex``.
Exit status: 0 all checks pass, 1 a check failed, 2 missing inputs or tools.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("pdftoppm", "pdftotext", "pdffonts", "pdfinfo")
SCRIPT_RATIO = 0.7  # matplotlib mathtext: SHRINK_FACTOR of sub- and superscripts


class CheckError(Exception):
    """Missing inputs or tools (exit status 2)."""


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    if proc.returncode != 0:
        raise CheckError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def page_count(pdf: Path) -> int:
    m = re.search(r"^Pages:\s+(\d+)", _run(["pdfinfo", str(pdf)]), flags=re.M)
    if not m:
        raise CheckError(f"pdfinfo reports no page count for {pdf}")
    return int(m.group(1))


def rendered_pages(pdf: Path, dpi: int = 20) -> int:
    """Number of page images pdftoppm writes for ``pdf``."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(Path(tmp) / "p")])
        return len(list(Path(tmp).glob("p*.png")))


def font_problems(pdf: Path) -> list[str]:
    """Fonts that are not embedded, and embedded fonts whose declared type does not match the font file
    (e.g. CFF outlines declared TrueType, which some viewers then draw blank)."""
    proc = subprocess.run(["pdffonts", str(pdf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace")
    if proc.returncode != 0:
        raise CheckError(f"pdffonts {pdf} failed: {proc.stderr.strip()[:500]}")
    # columns: name type encoding emb sub uni object ID; "emb" is the 5th field from the right
    problems = [f"font not embedded: {r}" for r in proc.stdout.splitlines()[2:] if r.strip() and r.split()[-5] != "yes"]
    if "Mismatch between font type and embedded font file" in proc.stderr:
        problems.append("a font is embedded with a type that does not match its file (pdffonts: 'Mismatch between "
                        "font type and embedded font file'); regenerate the figures with the TrueType copy of "
                        "the CJK font (diffusion/report/fonts.py)")
    return problems


def unresolved_marks(pdf: Path) -> int:
    return _run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"]).count("??")


# ------------------------------------------------------------------------- text sizes in a figure PDF
_STREAM = re.compile(rb"<<(.*?)>>\s*stream\r?\n(.*?)\r?\nendstream", re.S)
_TOKEN = re.compile(rb"\((?:\\.|[^\\)])*\)|<[0-9A-Fa-f\s]*>|\[|\]|/[^\s/\[\]()<>]+|[-+]?(?:\d+\.?\d*|\.\d+)|[A-Za-z'\"*]+")


def _content_streams(data: bytes) -> list[bytes]:
    out = []
    for m in _STREAM.finditer(data):
        head, body = m.group(1), m.group(2)
        if b"/Subtype" in head and b"/Form" not in head:  # images and fonts, not content
            continue
        if b"/FlateDecode" in head:
            try:
                body = zlib.decompress(body)
            except zlib.error:
                continue
        elif b"/Filter" in head:
            continue
        out.append(body)
    return out


def text_sizes(pdf: Path) -> list[float]:
    """Effective size (points, at the figure's own scale) of every text-showing operator in ``pdf``."""
    sizes: list[float] = []
    for stream in _content_streams(pdf.read_bytes()):
        operands: list[bytes] = []
        ctm_scale, stack = 1.0, []
        font_size, tm_scale = None, 1.0
        for tok in _TOKEN.findall(stream):
            if tok[:1].isalpha() or tok in (b"'", b'"'):
                op = tok
                nums = []
                for o in operands:
                    try:
                        nums.append(float(o))
                    except ValueError:
                        nums.append(None)
                if op == b"q":
                    stack.append(ctm_scale)
                elif op == b"Q":
                    ctm_scale = stack.pop() if stack else 1.0
                elif op == b"cm" and len(nums) >= 6 and None not in nums[-6:]:
                    a, b = nums[-6], nums[-5]
                    ctm_scale *= math.hypot(a, b)
                elif op == b"BT":
                    tm_scale = 1.0
                elif op == b"Tf" and nums and nums[-1] is not None:
                    font_size = nums[-1]
                elif op == b"Tm" and len(nums) >= 6 and None not in nums[-6:]:
                    tm_scale = math.hypot(nums[-6], nums[-5])
                elif op in (b"Tj", b"TJ", b"'", b'"') and font_size is not None:
                    sizes.append(font_size * tm_scale * ctm_scale)
                operands = []
            elif tok not in (b"[", b"]"):
                operands.append(tok)
    return sizes


def included_figures(log_text: str) -> dict[str, float]:
    """``{figure name: scale}`` from the ``ProfFig: <name> scale=<s>`` lines \\ProfFig writes to the log."""
    out: dict[str, float] = {}
    for name, scale in re.findall(r"ProfFig: (\S+) scale=([0-9.eE+-]+)", log_text):
        out[name] = min(out.get(name, math.inf), float(scale))
    return out


def figure_dir(build_dir: Path) -> Path:
    profile_tex = build_dir / "profile.tex"
    m = re.search(r"\\newcommand\{\\FigDir\}\{(.*?)/?\}", profile_tex.read_text(encoding="utf-8")) \
        if profile_tex.is_file() else None
    if not m:
        raise CheckError(f"{profile_tex} does not name the figure folder (\\FigDir); build the thesis first")
    return Path(m.group(1))


def small_figure_text(build_dir: Path, min_pt: float) -> list[str]:
    log = build_dir / "thesis.log"
    if not log.is_file():
        raise CheckError(f"{log} is missing; build the thesis first")
    scales = included_figures(log.read_text(encoding="utf-8", errors="replace"))
    if not scales:
        raise CheckError(f"{log} records no included figure (no 'ProfFig:' lines)")
    fig_dir = figure_dir(build_dir)
    problems = []
    for name, scale in sorted(scales.items()):
        sizes = sorted(set(round(x, 3) for x in text_sizes(fig_dir / f"{name}.pdf")))
        for size in sizes:
            script = any(abs(size / SCRIPT_RATIO - other) <= 0.01 * other for other in sizes)
            limit = min_pt * (SCRIPT_RATIO if script else 1.0)
            if size * scale < limit - 0.05:
                what = "maths script" if script else "text"
                problems.append(f"figure {name}: {what} of {size * scale:.1f} pt at print size ({size:.2f} pt in "
                                f"the figure × scale {scale:.2f}); the minimum is {limit:.1f} pt")
                break
    return problems


def check(pdf: Path, min_pt: float = 7.0, pages: tuple[int, int] = (30, 150)) -> list[str]:
    """All problems found (empty list: the thesis passes)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise CheckError(f"poppler tools not found: {', '.join(missing)} (make setup installs poppler-utils)")
    if not pdf.is_file():
        raise CheckError(f"{pdf} not found; build it with `make thesis`")
    problems = []
    n = page_count(pdf)
    rendered = rendered_pages(pdf)
    if rendered != n:
        problems.append(f"only {rendered} of {n} pages render")
    if not pages[0] <= n <= pages[1]:
        problems.append(f"{n} pages, outside the expected {pages[0]}–{pages[1]}")
    marks = unresolved_marks(pdf)
    if marks:
        problems.append(f"the text contains '??' {marks} time(s) (unresolved reference or citation)")
    problems += font_problems(pdf)
    problems += small_figure_text(pdf.parent, min_pt)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pdf", type=Path, default=REPO / "thesis" / "build" / "thesis.pdf",
                        help="the built thesis (its folder must hold thesis.log and profile.tex)")
    parser.add_argument("--min-pt", type=float, default=7.0, help="smallest text size in figures at print size")
    parser.add_argument("--pages", type=int, nargs=2, default=(30, 150), metavar=("MIN", "MAX"),
                        help="allowed page count")
    args = parser.parse_args(argv)
    try:
        problems = check(args.pdf, args.min_pt, tuple(args.pages))
    except CheckError as exc:
        print(f"thesis_check: error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print("thesis_check: the thesis has problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"thesis_check: {args.pdf} passes ({page_count(args.pdf)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
