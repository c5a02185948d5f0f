"""Write the lines under each notebook's title that say what it produces, how long it runs and what it reuses.

    python tools/notebook_headers.py           # rewrite those lines in notebooks/NN_*.py
    python tools/notebook_headers.py --check   # exit 1 naming every notebook whose lines are out of date
                                               # (wall times and machines are checked for form only)

The lines are generated, never typed by hand:

* **Produces** -- the thesis floats showing the notebook's artefacts, by ``\\label`` and short caption (a float
  belongs to artefact ``name`` when its caption carries ``\\SourceNote{name}``/``\\SourceNoteNoData{name}``;
  which notebook wrote ``name`` comes from ``figures/quick/provenance.json``); artefacts that no float shows
  are listed by file name.
* **Runs** -- the notebook's wall time in ``figures/quick/provenance.json`` (the machine named there) and
  in ``figures/gpu/provenance.json`` when that profile has been run, else "not measured".
* **Cache** -- which of the package's cached steps the notebook's code calls (``diffusion.experiments``).

The block is the run of ``# **Produces:**`` ... lines right after the title; it is inserted when missing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "**Produces:**"
WIDTH = 110
TRAIN_NOTEBOOK = "04_training"
TITLE = re.compile(r"^# # \d\d · .*$", re.M)
FLOAT = re.compile(r"\\begin\{(figure|table)\}(.*?)\\end\{\1\}", re.S)
# cached steps of diffusion.experiments / Artefacts, as the notebooks call them
CACHED_CALLS = (
    ("experiments.train_toy(", "the trained ε-MLP"),
    ("experiments.trained_model(", "04_training's trained U-Nets (trained here if 04 has not run yet)"),
    ("experiments.proxy_classifier(", "the proxy classifier"),
    ("experiments.generate(", "generated samples"),
    ("art.cached(", "intermediate results"),
)


def thesis_floats(chapters: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """``(artefact, kind) -> (label, short caption)`` of every float whose caption names an artefact."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for tex in sorted(chapters.glob("*.tex")):
        for env, body in FLOAT.findall(tex.read_text(encoding="utf-8")):
            src = re.search(r"\\SourceNote(?:NoData)?\{([A-Za-z0-9_-]+)\}", body)
            label = re.search(r"\\label\{((?:fig|tab):[^}]+)\}", body)
            short = re.search(r"\\caption\[([^\]]*)\]", body)
            if src and label:
                out[(src.group(1), env)] = (label.group(1), short.group(1) if short else "")
    return out


def _duration(seconds: float) -> str:
    """Coarse on purpose (a rerun moves the wall time by a few per cent): under 10 s, 10 s steps, minutes."""
    if seconds < 10:
        return "under 10 s"
    if seconds < 90:
        return f"about {round(seconds / 10) * 10} s"
    return f"about {round(seconds / 60)} min"


def _runs(name: str, provenance: dict[str, dict]) -> str:
    quick = provenance.get("quick", {}).get("notebooks", {}).get(name)
    gpu = provenance.get("gpu", {}).get("notebooks", {}).get(name)
    cpu_text = (f"{_duration(quick['wall_time_s'])} with profile quick on {quick['device']}" if quick
                else "not measured with profile quick")
    gpu_text = f"{_duration(gpu['wall_time_s'])} with profile gpu on {gpu['device']}" if gpu else "not measured"
    return f"**Runs:** {cpu_text}; on a GPU: {gpu_text}."


def _produces(name: str, provenance: dict[str, dict], floats: dict) -> str:
    entries = [e for e in provenance.get("quick", {}).get("artefacts", [])
               if e["notebook"] == name and e["kind"] in ("figure", "table")]
    shown, other = [], []
    for e in entries:
        hit = floats.get((e["artefact"], e["kind"]))
        if hit:
            shown.append(f"`{hit[0]}` ({hit[1]})" if hit[1] else f"`{hit[0]}`")
        else:
            other.append(f"`{e['artefact']}`")
    if not entries:
        return f"{MARK} no figure or table of the thesis (numbers and checks only)."
    text = f"{MARK} " + (", ".join(shown) if shown else "no float of the thesis")
    if other:
        text += "; also " + ", ".join(other) + " (not shown in the thesis)"
    return text + "."


def _cache(name: str, code: str) -> str:
    used = [what for call, what in CACHED_CALLS if call in code]
    if name == TRAIN_NOTEBOOK:
        used = ["its trained U-Nets" if what.startswith(TRAIN_NOTEBOOK) else what for what in used]
    if not used:
        return "**Cache:** none; everything is computed on each run."
    return ("**Cache:** reuses " + ", ".join(used) + " from `cache/` when the inputs are unchanged "
            "(computed and stored otherwise).")


def header_lines(name: str, code: str, provenance: dict[str, dict], floats: dict) -> list[str]:
    """The block's lines (without the leading ``# ``), wrapped at :data:`WIDTH` characters."""
    parts = [_produces(name, provenance, floats), _runs(name, provenance), _cache(name, code)]
    return [ln for part in parts for ln in textwrap.wrap(part, WIDTH, break_on_hyphens=False)]


def with_header(text: str, lines: list[str]) -> str:
    """``text`` (a notebook's .py) with the block after its title replaced by (or given) ``lines``."""
    title = TITLE.search(text)
    if not title:
        raise ValueError("the notebook has no title line '# # NN · ...' in its first markdown cell")
    head, rest = text[:title.end() + 1], text[title.end() + 1:]
    old = re.match(r"#\n# " + re.escape(MARK) + r".*\n(?:# .*\n)*", rest)
    if old:
        rest = rest[old.end():]
    return head + "#\n" + "".join(f"# {ln}\n" for ln in lines) + rest


MEASURED = re.compile(r"(?:under 10 s|about \d+ (?:s|min)) with profile (\w+) on (.+?)(?=; on a GPU|\.$)")


def comparable(text: str) -> str:
    """``text`` with the header block unwrapped and its measurements (wall times, machines) masked: what a
    check compares, so that regenerating ``figures/quick`` on another machine, which rewrites them, leaves
    a notebook current. Everything else of the block (floats, cached steps) is compared as written."""
    title = TITLE.search(text)
    if not title:
        return text
    head, rest = text[:title.end() + 1], text[title.end() + 1:]
    block = re.match(r"#\n# " + re.escape(MARK) + r".*\n(?:# .*\n)*", rest)
    if not block:
        return text
    lines = [ln[2:] for ln in block.group(0).splitlines()[1:]]
    parts = re.split(r" (?=\*\*(?:Runs|Cache):\*\*)", " ".join(lines))
    masked = [MEASURED.sub(r"<wall time> with profile \1 on <machine>", part) for part in parts]
    return head + "\n".join(masked) + "\n" + rest[block.end():]


def load_provenance(figures: Path) -> dict[str, dict]:
    out = {}
    for profile in ("quick", "gpu"):
        path = figures / profile / "provenance.json"
        if path.is_file():
            out[profile] = json.loads(path.read_text(encoding="utf-8"))
    return out


def expected(root: Path) -> dict[Path, str]:
    """Every notebook's .py as this script would write it."""
    provenance = load_provenance(root / "figures")
    floats = thesis_floats(root / "thesis" / "chapters")
    out = {}
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.py")):
        text = path.read_text(encoding="utf-8")
        out[path] = with_header(text, header_lines(path.stem, text, provenance, floats))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a notebook is out of date")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    stale = []
    for path, text in expected(args.root.resolve()).items():
        current = path.read_text(encoding="utf-8")
        if current != text and (not args.check or comparable(current) != comparable(text)):
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python tools/notebook_headers.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    for name in stale:
        print(f"rewrote the header of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
