"""The writer a notebook hands everything the thesis reads to (see ``docs/artefacts.md``)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.report.cache import CacheEntry, cached
from diffusion.report.latex import SMOKE_TEXT, escape_latex, mark_smoke_table
from diffusion.report.paths import check_profile, repo_root
from diffusion.report.provenance import commit_label, device_name, jsonable, run_source_state, torch_version
from diffusion.report.style import set_style

_COMMAND_NAME = re.compile(r"^[A-Za-z]+$")


def _show_in_kernel(fig, png: Path, close: bool) -> None:
    """Display the saved PNG as a cell output when running in a Jupyter kernel (at the figure's on-screen
    size). A figure left open under the inline backend is shown by the backend itself, so not twice."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return
    import matplotlib

    if not close and "inline" in matplotlib.get_backend():
        return
    from IPython.display import Image, display

    display(Image(filename=str(png), width=round(fig.get_figwidth() * fig.dpi)))


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
        check_profile(profile)
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
        src = run_source_state()  # the commit as the run began (tools/make_figures.py), and whether it was dirty
        self._env = {"git_commit": commit_label(src), "dirty": src["dirty"],
                     "device": device_name(), "torch_version": torch_version()}
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
            "config": jsonable(config if config is not None else self.config),
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
                    wall_time_s: float | None = None, close: bool = True) -> None:
        """Write ``<name>.pdf`` (vector) and ``<name>.png`` into ``out_dir``; watermark "SMOKE TEST" in the
        smoke profile. In a Jupyter kernel (JupyterLab, papermill) the PNG is also shown as the cell's output,
        whatever matplotlib backend is active, so executed notebooks and their HTML carry the figure.
        The written files are listed in ``entries`` (provenance)."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
            raise ValueError(f"name must be a plain artefact name such as 'loss_curve', got {name!r}")
        if self.smoke:
            fig.text(0.5, 0.5, SMOKE_TEXT, transform=fig.transFigure, fontsize=40, color="red", alpha=0.35,
                     ha="center", va="center", rotation=30, zorder=1000, fontweight="bold",
                     fontfamily="DejaVu Sans")
        files = [self.out_dir / f"{name}.pdf", self.out_dir / f"{name}.png"]
        fig.savefig(files[0], metadata={"Title": name, "Subject": f"profile {self.profile}"})
        fig.savefig(files[1])
        _show_in_kernel(fig, files[1], close)
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
        self._record(name, "figure", files, dataset, config, seed, wall_time_s)

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
               producer: str | None = None, modules: Sequence[str] | None = None,
               fingerprint: str | None = None) -> CacheEntry:
        """:func:`cached` with this notebook's profile; ``producer`` names the notebook whose work this is
        when another notebook asks for it (05 and 06 reuse 04's trained models under 04's key)."""
        return cached(key_parts, fn, kind, notebook=producer or self.notebook, profile=self.profile,
                      cache_root=self.cache_root, modules=modules, fingerprint=fingerprint)
