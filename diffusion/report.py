"""What the notebooks write and how: figure style, artefact writers and the content-keyed cache.

The thesis reads only what :class:`Artefacts` writes (see ``docs/artefacts.md``):

- figures as vector PDF (for LaTeX) and PNG, diagonally watermarked "SMOKE TEST" in the ``smoke`` profile;
- booktabs tabulars under ``tables/`` (a marker row in ``smoke``);
- ``numbers/<notebook>.tex`` fragments of ``\\newcommand`` lines, one per number the text quotes;
- ``provenance/<notebook>.json``: one entry per artefact (notebook, profile, dataset label, config, seed,
  git commit, device, torch version, wall time, created UTC).

Expensive work (training, sampling, feature statistics) goes through :func:`cached`: its result is stored
under ``cache/<profile>/<kind>/<key>/``, where the key is a SHA-256 of the producing notebook's name, the
sources of the ``diffusion`` modules the work depends on (with everything they import from the package),
the configuration and the data digest. A changed input gives a new key, so an entry is never reused for
inputs it was not computed from. Plotting is never cached.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROFILES",
    "Artefacts",
    "CacheEntry",
    "booktabs_tabular",
    "cached",
    "data_digest",
    "device_name",
    "escape_latex",
    "latex_sci",
    "image_grid",
    "mark_smoke_table",
    "show_images",
    "torch_version",
    "git_commit",
    "repo_root",
    "set_style",
    "source_digest",
]

PROFILES = ("smoke", "quick", "gpu", "full")
"""Profile names, shortest first; each has its own ``figures/<profile>/`` folder."""

SMOKE_TEXT = "SMOKE TEST"
PACKAGE_DIR = Path(__file__).resolve().parent
FANDOL_DIR = Path("/usr/share/texlive/texmf-dist/fonts/opentype/public/fandol")


def repo_root() -> Path:
    """The repository root (the folder holding the ``diffusion`` package)."""
    return PACKAGE_DIR.parent


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


# --------------------------------------------------------------------------------------------- style
def _register_cjk_font() -> str | None:
    """Register FandolSong (Debian TeX's CJK serif) with matplotlib; its family name, or None if absent."""
    from matplotlib import font_manager

    candidates = sorted(FANDOL_DIR.glob("FandolSong-Regular.otf")) if FANDOL_DIR.is_dir() else []
    if not candidates:
        try:
            out = subprocess.run(["fc-list", ":family=FandolSong", "file"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        candidates = [Path(line.split(":")[0]) for line in out.splitlines() if line.strip()]
    for path in candidates:
        if path.is_file():
            font_manager.fontManager.addfont(str(path))
            return font_manager.FontProperties(fname=str(path)).get_name()
    return None


def set_style() -> str | None:
    """Apply the house plot style (print-legible sizes, one colour cycle, vector-friendly fonts).

    The CJK-capable FandolSong is registered and used (after DejaVu Sans for Latin glyphs) when the Debian
    TeX fonts are installed; otherwise the style quietly stays with DejaVu Sans. Returns the CJK family
    name, or None.
    """
    import matplotlib

    cjk = _register_cjk_font()
    families = ["DejaVu Sans"] + ([cjk] if cjk else [])
    matplotlib.rcParams.update({
        "figure.dpi": 110,
        "figure.constrained_layout.use": True,
        "savefig.dpi": 200,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.03,
        "font.family": "sans-serif",
        "font.sans-serif": families + list(matplotlib.rcParams["font.sans-serif"]),
        "font.size": 9,
        "axes.titlesize": 9,
        "axes.labelsize": 9,
        "legend.fontsize": 8,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
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


# ------------------------------------------------------------------------------------------- LaTeX
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters in plain ``text``."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


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


_COMMAND_NAME = re.compile(r"^[A-Za-z]+$")


# --------------------------------------------------------------------------------------- provenance
def git_commit(root: Path | None = None) -> str:
    """The checkout's commit hash, with ``-dirty`` when tracked files differ; ``unknown`` without git."""
    root = root or repo_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown (no commit)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    """The CUDA device's name when one is used, else the CPU model from /proc/cpuinfo (plus core count)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def torch_version() -> str:
    """``torch.__version__`` (``not installed`` without torch)."""
    try:
        import torch

        return str(torch.__version__)
    except ImportError:
        return "not installed"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


# --------------------------------------------------------------------------------------------- cache
def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "diffusion":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """``diffusion`` modules imported anywhere in the file (including relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = "diffusion" + "".join("." + p for p in path.relative_to(PACKAGE_DIR).parent.parts)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "diffusion")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "diffusion":
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from diffusion import unet"
    return found


def source_digest(modules: Sequence[str] | None = None) -> str:
    """SHA-256 of the sources the cached work depends on.

    This file is never hashed: report.py holds only the style, writers and cache mechanics, which never
    change a cached result. ``modules=None`` hashes every other ``diffusion/**/*.py``. Otherwise the named modules (``"diffusion.train"``)
    and, transitively, every ``diffusion`` module they import are hashed, so an edit to an unrelated
    module (say, the metrics) leaves a training entry valid.
    """
    if modules is None:
        files = sorted(p for p in PACKAGE_DIR.rglob("*.py") if p.resolve() != Path(__file__).resolve())
    else:
        for name in modules:
            if _module_path(name) is None:
                raise ValueError(f"modules: no source for {name!r} under {PACKAGE_DIR}")
        todo = list(modules)
        seen: dict[str, Path] = {}
        while todo:
            name = todo.pop()
            path = _module_path(name)
            if name in seen or path is None:  # None: "from diffusion.x import function" names no module
                continue
            if path.resolve() == Path(__file__).resolve():  # writers only; never changes a result
                continue
            seen[name] = path
            todo.append(name.rsplit(".", 1)[0])  # the parent package runs on import too
            todo.extend(_imports(path))
        files = sorted(set(seen.values()))
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def data_digest(images: Any, labels: Any = None, name: str = "") -> str:
    """SHA-256 of a dataset's pixels (and labels, and name): the data part of a cache key."""
    h = hashlib.sha256(name.encode() + b"\0")
    for arr in (images, labels):
        if arr is None:
            continue
        a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class CacheEntry:
    """A finished cache entry: its folder, its key, the stored result, and whether it was reused."""

    path: Path
    key: str
    result: dict
    hit: bool


def _store_result(path: Path, result: Mapping | None) -> None:
    result = dict(result or {})
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in result.items() if k not in arrays}
    if arrays:
        np.savez(path / "arrays.npz", **arrays)
    (path / "result.json").write_text(json.dumps(_jsonable(rest), indent=1, sort_keys=True))


def _load_result(path: Path) -> dict:
    result = json.loads((path / "result.json").read_text())
    if (path / "arrays.npz").is_file():
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            result.update({k: z[k] for k in z.files})
    return result


def cache_key(key_parts: Mapping[str, Any], notebook: str, modules: Sequence[str] | None = None) -> tuple[str, dict]:
    """(key, described inputs): SHA-256 over the notebook name, :func:`source_digest` and ``key_parts``
    (config, data digest, seeds, ...), serialised as canonical JSON."""
    if not isinstance(key_parts, Mapping):
        raise ValueError(f"key_parts must be a dict of what determines the work, got {type(key_parts).__name__}")
    inputs = {"notebook": notebook, "sources": source_digest(modules),
              "modules": sorted(modules) if modules is not None else "diffusion/**",
              "parts": _jsonable(key_parts)}
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24], inputs


def cached(key_parts: Mapping[str, Any], fn: Callable[[Path], Mapping | None], kind: str, *,
           notebook: str, profile: str, cache_root: Path | str | None = None,
           modules: Sequence[str] | None = None) -> CacheEntry:
    """Run ``fn(work_dir)`` once per distinct input and reuse its result afterwards.

    ``fn`` writes files (checkpoints, npz) into ``work_dir`` and returns a dict; numpy arrays in it are
    stored in ``arrays.npz``, everything else as JSON. The entry lives in
    ``<cache_root>/<profile>/<kind>/<key>/`` (``cache_root`` defaults to ``$DDPM_CACHE_DIR`` or
    ``<repo>/cache``). It is built in ``<key>.partial/`` and renamed into place only when ``fn`` returned,
    so an interrupted run never leaves an entry that looks finished; a rerun passes the same ``.partial``
    folder to ``fn`` again, which may resume from what it finds there (the training of the ``full``
    profile does).
    """
    _check_profile(profile)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", kind or ""):
        raise ValueError(f"kind must be a non-empty name of letters, digits, '-' or '_', got {kind!r}")
    key, inputs = cache_key(key_parts, notebook, modules)
    root = Path(cache_root or os.environ.get("DDPM_CACHE_DIR") or repo_root() / "cache")
    final = root / profile / kind / key
    if (final / "result.json").is_file():
        return CacheEntry(final, key, _load_result(final), True)
    partial = final.with_name(key + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
    result = fn(partial)
    _store_result(partial, result)
    if final.exists():  # a concurrent run finished first; keep its entry
        shutil.rmtree(partial)
    else:
        os.replace(partial, final)
    return CacheEntry(final, key, _load_result(final), False)


# ----------------------------------------------------------------------------------------- artefacts
class Artefacts:
    """The writer a notebook hands everything the thesis reads to.

    Args:
        profile: one of :data:`PROFILES`; ``smoke`` marks every figure and table.
        notebook: the notebook's name (``"04_training"``), used for fragments, provenance and cache keys.
        out_dir: where ``<name>.pdf|png``, ``tables/``, ``numbers/`` and ``provenance/`` go (``make figures``
            passes a staging folder); default ``<repo>/build/interactive/<profile>`` so an interactive run
            never touches ``figures/``.
        dataset, config, seed: default provenance fields of every artefact (each save may override them).
        cache_root: root of the cache (see :func:`cached`).
    """

    def __init__(self, profile: str, notebook: str, out_dir: Path | str | None = None, *,
                 dataset: str | None = None, config: Any = None, seed: int | None = None,
                 cache_root: Path | str | None = None):
        _check_profile(profile)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", notebook or ""):
            raise ValueError(f"notebook must be a plain name such as '04_training', got {notebook!r}")
        self.profile = profile
        self.notebook = notebook
        self.out_dir = Path(out_dir) if out_dir else repo_root() / "build" / "interactive" / profile
        self.dataset, self.config, self.seed = dataset, config, seed
        self.cache_root = cache_root
        self.started = time.perf_counter()
        self.numbers: dict[str, str] = {}
        self.entries: list[dict] = []
        self._env = {"git_commit": git_commit(), "device": device_name(), "torch_version": torch_version()}
        for sub in ("tables", "numbers", "provenance"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)
        self.cjk_font = set_style()

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    # provenance ---------------------------------------------------------------------------------
    def _record(self, name: str, kind: str, files: list[Path], dataset, config, seed, wall_time_s) -> None:
        entry = {
            "artefact": name, "kind": kind, "files": [str(f.relative_to(self.out_dir)) for f in files],
            "notebook": self.notebook, "profile": self.profile,
            "dataset": dataset if dataset is not None else self.dataset,
            "config": _jsonable(config if config is not None else self.config),
            "seed": seed if seed is not None else self.seed,
            **self._env,
            "wall_time_s": round(wall_time_s if wall_time_s is not None else time.perf_counter() - self.started, 3),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.entries = [e for e in self.entries if not (e["artefact"] == name and e["kind"] == kind)]
        self.entries.append(entry)
        self._write_fragments()

    def _write_fragments(self) -> None:
        (self.out_dir / "provenance" / f"{self.notebook}.json").write_text(
            json.dumps(self.entries, indent=1, ensure_ascii=False))
        lines = [f"% numbers of notebook {self.notebook}, profile {self.profile}"]
        lines += [rf"\newcommand{{\{k}}}{{{v}}}" for k, v in self.numbers.items()]
        (self.out_dir / "numbers" / f"{self.notebook}.tex").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # writers ------------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, *, dataset=None, config=None, seed=None,
                    wall_time_s: float | None = None, close: bool = True) -> list[Path]:
        """Write ``<name>.pdf`` (vector) and ``<name>.png``; watermark "SMOKE TEST" in the smoke profile."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
            raise ValueError(f"name must be a plain artefact name such as 'loss_curve', got {name!r}")
        if self.smoke:
            fig.text(0.5, 0.5, SMOKE_TEXT, transform=fig.transFigure, fontsize=40, color="red", alpha=0.35,
                     ha="center", va="center", rotation=30, zorder=1000, fontweight="bold")
        files = [self.out_dir / f"{name}.pdf", self.out_dir / f"{name}.png"]
        fig.savefig(files[0], metadata={"Title": name, "Subject": f"profile {self.profile}"})
        fig.savefig(files[1])
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
        self._record(name, "figure", files, dataset, config, seed, wall_time_s)
        return files

    def save_table(self, name: str, tabular_tex: str, *, dataset=None, config=None, seed=None,
                   wall_time_s: float | None = None) -> Path:
        """Write ``tables/<name>.tex``: a booktabs tabular (no float), marked in the smoke profile."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
            raise ValueError(f"name must be a plain artefact name such as 'hparams', got {name!r}")
        if not re.search(r"\\begin\{tabular\}", tabular_tex) or r"\toprule" not in tabular_tex:
            raise ValueError("tabular_tex must be a booktabs tabular (\\begin{tabular}..., \\toprule); "
                             "build one with booktabs_tabular()")
        if re.search(r"\\begin\{table\}", tabular_tex):
            raise ValueError("tabular_tex must not contain a table float; the thesis wraps the tabular")
        text = mark_smoke_table(tabular_tex) if self.smoke else tabular_tex
        path = self.out_dir / "tables" / f"{name}.tex"
        path.write_text(text, encoding="utf-8")
        self._record(name, "table", [path], dataset, config, seed, wall_time_s)
        return path

    def number(self, name: str, value: Any, fmt: str = "{}", *, escape: bool = True, dataset=None,
               config=None, seed=None) -> str:
        r"""Record ``\newcommand{\<name>}{<value formatted by fmt>}`` for ``numbers.tex``; returns the text.

        ``name`` must be letters only (a LaTeX control word). Text values are LaTeX-escaped unless
        ``escape=False``; a non-finite number is an error (it would print as "nan" in the thesis).
        """
        if not isinstance(name, str) or not _COMMAND_NAME.match(name):
            raise ValueError(f"name must consist of letters only (a LaTeX command name), got {name!r}")
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            raise ValueError(f"value of {name} must be finite, got {value!r}")
        text = fmt.format(value)
        text = escape_latex(text) if escape else text
        self.numbers[name] = text
        self._record(name, "number", [self.out_dir / "numbers" / f"{self.notebook}.tex"], dataset, config,
                     seed, None)
        return text

    # cache --------------------------------------------------------------------------------------
    def cached(self, key_parts: Mapping[str, Any], fn: Callable[[Path], Mapping | None], kind: str, *,
               producer: str | None = None, modules: Sequence[str] | None = None) -> CacheEntry:
        """:func:`cached` with this notebook's profile; ``producer`` names the notebook whose work this is
        when another notebook asks for it (05 and 06 reuse 04's trained models under 04's key)."""
        return cached(key_parts, fn, kind, notebook=producer or self.notebook, profile=self.profile,
                      cache_root=self.cache_root, modules=modules)
