"""The CJK face of the figures: FandolSong (the thesis's own Song face), as a TrueType copy.

Debian's TeX ships FandolSong as an OpenType font with CFF outlines. matplotlib embeds every font of a PDF
with ``pdf.fonttype = 42`` as TrueType (``FontFile2``), which for CFF outlines gives an invalid PDF (poppler:
"Mismatch between font type and embedded font file"; other viewers may show blank glyphs). So the OTF is
converted once to TrueType outlines (cubic → quadratic curves, fontTools ``cu2qu``) and cached under
``$XDG_CACHE_HOME/ddpm-thesis/`` (default ``~/.cache``); matplotlib then embeds a true TrueType font.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

FANDOL_DIR = Path("/usr/share/texlive/texmf-dist/fonts/opentype/public/fandol")
FONT_FILE = "FandolSong-Regular.otf"


def find_fandol_song() -> Path | None:
    """Path of FandolSong-Regular.otf (Debian TeX or fontconfig), or None."""
    path = FANDOL_DIR / FONT_FILE
    if path.is_file():
        return path
    try:
        out = subprocess.run(["fc-list", ":family=FandolSong:style=Regular", "file"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = [Path(line.split(":")[0]) for line in out.splitlines() if line.strip()]
    return next((f for f in files if f.is_file()), None)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm-thesis"


def truetype_copy(otf: Path, out_dir: Path | None = None) -> Path:
    """A TrueType (``glyf``) copy of the CFF-flavoured OpenType font ``otf``, made once and cached.

    The outlines are converted with a maximum error of one font unit; names, metrics and the character map
    are kept. The copy is written to a temporary file and renamed, so concurrent callers never see half a
    font.
    """
    otf = Path(otf)
    out = (Path(out_dir) if out_dir else cache_dir()) / (otf.stem + ".ttf")
    if out.is_file() and out.stat().st_mtime >= otf.stat().st_mtime:
        return out
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import TTFont, newTable

    font = TTFont(str(otf))
    if "CFF " not in font:
        raise ValueError(f"otf must be an OpenType font with CFF outlines, got {otf}")
    glyph_set, order = font.getGlyphSet(), font.getGlyphOrder()
    glyf = newTable("glyf")
    glyf.glyphOrder, glyf.glyphs = order, {}
    for name in order:
        pen = TTGlyphPen(glyph_set)
        glyph_set[name].draw(Cu2QuPen(pen, 1.0, reverse_direction=True))
        glyf[name] = pen.glyph()
    font["glyf"], font["loca"] = glyf, newTable("loca")
    for tag in ("CFF ", "VORG"):
        if tag in font:
            del font[tag]
    maxp = newTable("maxp")
    maxp.tableVersion = 0x00010000
    for field in ("maxTwilightPoints", "maxStorage", "maxFunctionDefs", "maxInstructionDefs",
                  "maxStackElements", "maxSizeOfInstructions", "maxComponentElements"):
        setattr(maxp, field, 0)
    maxp.maxZones = 1
    font["maxp"] = maxp
    font["head"].glyphDataFormat = 0
    post = font["post"]
    post.formatType, post.extraNames, post.mapping = 3.0, [], {}
    font.sfntVersion = "\x00\x01\x00\x00"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".ttf.part", delete=False) as tmp:
        font.save(tmp.name)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, out)
    return out


def register_cjk_font() -> str | None:
    """Register the TrueType copy of FandolSong with matplotlib; its family name, or None when FandolSong
    is not installed."""
    from matplotlib import font_manager

    otf = find_fandol_song()
    if otf is None:
        return None
    ttf = truetype_copy(otf)
    font_manager.fontManager.addfont(str(ttf))
    return font_manager.FontProperties(fname=str(ttf)).get_name()
