"""The house figure style: print-legible sizes, one colour cycle, a CJK font for Chinese labels, image grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffusion.report.fonts import register_cjk_font

# Print geometry of the thesis (thesis/thesis.tex: A4, 2.8 cm + 2.6 cm side margins): figures are drawn at the
# size they are printed, so a font size here is the printed size. The thesis includes a figure at its
# natural size unless it is wider than the text (then it is scaled down), see \ProfFig in thesis/macros.tex.
TEXT_WIDTH_IN = 15.6 / 2.54
FULL_WIDTH_IN = 6.0   # a figure across the text width
HALF_WIDTH_IN = 3.6   # a small single-panel figure
MIN_PRINT_PT = 7.0    # smallest text size allowed at print size (checked by tools/thesis_check.py)


def set_style() -> str | None:
    """Apply the house plot style (print-legible sizes, one colour cycle, vector-friendly fonts).

    The CJK-capable FandolSong (the thesis's own Song face) is registered and used first, for Chinese and
    Latin text alike, when the Debian TeX fonts are installed, with DejaVu Sans as the fallback for the few
    symbols it lacks; otherwise the style quietly stays with DejaVu Sans. The CJK face must come first:
    the non-maths parts of a label with maths (``"时间步 $t$"``) are drawn with the first family only.
    Maths uses the STIX faces, which match a serif text face. Returns the CJK family name, or None.
    """
    import matplotlib

    cjk = register_cjk_font()
    families = ([cjk] if cjk else []) + ["DejaVu Sans"]
    matplotlib.rcParams.update({
        "figure.dpi": 110,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 200,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.03,
        "font.family": families,
        "font.size": 8.5,
        "axes.titlesize": 8.5,
        "figure.titlesize": 9,
        "axes.labelsize": 8.5,
        "legend.fontsize": 7.5,
        "legend.title_fontsize": 7.5,
        "xtick.labelsize": 7.5,
        "ytick.labelsize": 7.5,
        "mathtext.fontset": "stix",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.5,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "lines.linewidth": 1.4,
        "axes.prop_cycle": matplotlib.cycler(color=["#1f4e79", "#c0504d", "#4f8a3a", "#8064a2", "#d08a1e",
                                                    "#2c9fa0", "#7f7f7f"]),
        "image.cmap": "viridis",
        "pdf.fonttype": 42,  # embed TrueType, so text stays text in the PDF
        "ps.fonttype": 42,
        "axes.unicode_minus": False,
    })
    return cjk


def _log_tick_label(value: float, pos=None) -> str:
    """``$10^{k}$`` at a decade, the plain number elsewhere; in maths mode, so the digits and the minus sign
    come from the STIX maths face (the CJK text face has no U+2212 minus, which matplotlib's own log tick
    labels would need)."""
    if not np.isfinite(value) or value <= 0:
        return ""
    k = math.log10(value)
    return f"$10^{{{round(k)}}}$" if abs(k - round(k)) < 1e-9 else f"${value:.3g}$"


def log_axis(ax, axis: str = "y") -> None:
    """Put ``axis`` ("x", "y" or "both") of ``ax`` on a log scale with tick labels in maths mode (see
    :func:`_log_tick_label`). An axis spanning less than two decades also labels its intermediate ticks (2 and
    5 × 10^k), and then writes every label as a plain number (0.02, 0.05, 0.1, …), decades included, so that
    one axis does not mix 10^k with decimals."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if axis not in ("x", "y", "both"):
        raise ValueError(f"axis must be 'x', 'y' or 'both', got {axis!r}")
    for name in ("x", "y") if axis == "both" else (axis,):
        getattr(ax, f"set_{name}scale")("log")
        target = getattr(ax, f"{name}axis")

        def narrow(target=target) -> bool:
            lo, hi = sorted(target.get_view_interval())
            return lo > 0 and math.log10(hi / lo) < 2

        def major(value, pos=None, narrow=narrow):
            return f"${value:.3g}$" if narrow() and np.isfinite(value) and value > 0 else _log_tick_label(value)

        def minor(value, pos=None, narrow=narrow):
            return major(value) if narrow() else ""

        target.set_major_formatter(FuncFormatter(major))
        target.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        target.set_minor_formatter(FuncFormatter(minor))


def grid_columns(n: int) -> int:
    """Columns for a grid of ``n`` images with no ragged last row: the smallest divisor of ``n`` that is at
    least √n (so the grid is as square as possible and at least as wide as tall); ``n`` itself if ``n`` is
    prime."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return next(d for d in range(math.isqrt(int(n) - 1) + 1 if n > 1 else 1, int(n) + 1) if n % d == 0)


def image_grid(images: np.ndarray | Any, nrow: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1] (tensor or array) into one (H', W', C) array in [0, 1].

    Row-major: image ``i`` goes to row ``i // nrow``, column ``i % nrow``; the last row is padded blank.
    """
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, float)
    if arr.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {arr.shape}")
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    n, c, h, w = arr.shape
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.float64)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = (np.clip(arr[i], -1, 1).transpose(1, 2, 0) + 1) / 2
    return grid


def show_images(ax, images, nrow: int, title: str | None = None, row_labels: Sequence[str] | None = None) -> None:
    """Draw :func:`image_grid` of ``images`` (uint8 0…255 or float in [-1, 1]) on ``ax`` (grey for one
    channel) without axes; ``row_labels`` names the grid's rows on the left."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 127.5 - 1
    grid = image_grid(arr, nrow)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.grid(False)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if row_labels is not None:
        side = arr.shape[-2] + 1  # image height plus the 1-pixel pad of image_grid
        ax.set_yticks(1 + side * np.arange(len(row_labels)) + arr.shape[-2] / 2, list(row_labels))
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)


