#!/usr/bin/env python3
"""Build the thesis PDF (thesis/build/thesis.pdf) from the artefacts of one figures profile.

Usage::

    python tools/build_thesis.py [--profile {full,gpu,long,quick,smoke}] [--figures-dir DIR] [--build-dir DIR]

Steps:

1. choose the profile: the one given, else the best whose ``<figures-dir>/<profile>/numbers.tex`` exists
   (order full > gpu > cpu > long > quick > smoke);
2. check that every artefact the thesis sources include (``\\ProfFig{name}``, ``\\ProfTable{name}``) and
   every ``numbers.tex`` macro they use exists, naming the notebook that makes a missing one (the
   notebook of each artefact is read from docs/artefacts.md, the contract);
3. write ``<build>/profile.tex`` (figure folder, ``\\input`` of numbers.tex, artefact → notebook links,
   comparison words derived from the numbers, bibliography path) and ``<build>/provenance.tex`` (the
   appendix, from provenance.json);
4. run ``latexmk -xelatex`` (biber) with ``-interaction=nonstopmode -halt-on-error``;
5. fail (exit status 1) on undefined references or citations and on "Missing character" warnings.

Exit status: 0 success, 1 LaTeX failure or log check failure, 2 missing inputs or tools.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THESIS_DIR = REPO / "thesis"
PROFILE_ORDER = ("full", "gpu", "cpu", "long", "quick", "smoke")
TEX_TOOLS = ("xelatex", "latexmk", "biber")
APT_COMMAND = (
    "apt-get update && apt-get install -y --no-install-recommends texlive-xetex texlive-lang-chinese "
    "texlive-fonts-recommended texlive-science latexmk biber texlive-bibtex-extra poppler-utils"
)

# Comparison words used by the text (see thesis/chapters): name -> (numerator macro, reference macro).
# \Rel<name>[word if equal]{word if first > second}{word if first < second}; the optional word defaults to
# "相同"; "无法比较" when a value is not a number. Lets a sentence such as "与 w=1 相比\RelAccThreeOne{更高}{更低}"
# or "（\RelAccThreeOne[持平]{上升}{下降}）" stay true and read naturally.
COMPARISONS = {
    "RelAccThreeOne": ("CondAccWThree", "CondAccWOne"),
    "RelAccOneZero": ("CondAccWOne", "CondAccWZero"),
    "RelCfdThreeOne": ("CfdWThree", "CfdWOne"),
    "RelStepsCfd": ("StepsCfdFifty", "StepsCfdFull"),
    "RelBpd": ("BpdFixedSmall", "BpdFixedLarge"),
    "RelWidth": ("WidthCfdNarrow", "WidthCfdBase"),
    "RelDepth": ("DepthCfdShallow", "WidthCfdBase"),
    "RelEpsTop": ("EpsMseTop", "EpsMseTopTrivial"),
    "RelDdimAncestral": ("StepsCfdFifty", "StepsCfdFiftyAncestral"),
}

# Configuration values the text quotes (section 3.3): macro -> (config file, dotted key). They are read from
# the YAML files the code trains with, so the text cannot drift from the configuration.
CONFIG_VALUES = {
    "CfgT": ("cifar10.yaml", "diffusion.num_timesteps"),
    "CfgBetaStart": ("cifar10.yaml", "diffusion.beta_start"),
    "CfgBetaEnd": ("cifar10.yaml", "diffusion.beta_end"),
    "CfgCh": ("cifar10.yaml", "model.ch"),
    "CfgAttnRes": ("cifar10.yaml", "model.attn_resolutions"),
    "CfgDropout": ("cifar10.yaml", "model.dropout"),
    "CfgCelebaDropout": ("celeba64.yaml", "model.dropout"),
    "CfgBatch": ("cifar10.yaml", "train.batch_size"),
    "CfgLr": ("cifar10.yaml", "train.lr"),
    "CfgAdamBetaOne": ("cifar10.yaml", "train.adam_betas.0"),
    "CfgAdamBetaTwo": ("cifar10.yaml", "train.adam_betas.1"),
    "CfgWarmup": ("cifar10.yaml", "train.warmup_steps"),
    "CfgGradClip": ("cifar10.yaml", "train.grad_clip"),
    "CfgEmaDecay": ("cifar10.yaml", "train.ema_decay"),
    "CfgTotalSteps": ("cifar10.yaml", "train.total_steps"),
    "CfgPUncond": ("cifar10.yaml", "train.p_uncond"),
}


# numbers.tex macros read by the generated profile.tex (comparisons, speed-up, GFLOPs wording).
DERIVED_FROM = {m for pair in COMPARISONS.values() for m in pair} | {
    "StepsTimeFull", "StepsTimeFifty", "CifarGFlops", "CondDatasetLabel", "UncondDatasetLabel",
    "BestGuidanceScale", "DefaultGuidanceScale"}


def _load_by_path(name: str, path: Path):
    """A module of this repository loaded from its file (importing the package would load torch)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LABELS = _load_by_path("_thesis_labels", REPO / "diffusion" / "report" / "labels.py")
_REPRODUCE = _load_by_path("_thesis_reproduce", REPO / "tools" / "reproduce_check.py")
"""tools/reproduce_check.py: how a macro's "d [low, high]" is read, and on which side of 0 it lies."""


class BuildError(Exception):
    """A problem the user must fix; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------- contract
def parse_contract(path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Read docs/artefacts.md: (figure -> notebook, table -> notebook, number macro -> notebook)."""
    if not path.is_file():
        raise BuildError(f"artefact contract not found: {path}")
    figures: dict[str, str] = {}
    tables: dict[str, str] = {}
    numbers: dict[str, str] = {}
    section = None
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip().split()[0].lower()
            continue
        if section in ("figures", "tables"):
            m = re.match(r"\|\s*`([A-Za-z0-9_]+)`\s*\|\s*([^|]+?)\s*\|", line)
            if m:
                (figures if section == "figures" else tables)[m.group(1)] = m.group(2)
        elif section == "numbers":
            # "General (04_training): `\X`, ..." or "03_unet: ..."; lines without a head continue the last one
            head = re.match(r"^\s*(?:[A-Za-z ]*\()?(\d\d_[a-z0-9_]+)\)?\s*:", line)
            if head:
                current = head.group(1)
            elif not line.strip():
                current = None
            if current:
                for macro in re.findall(r"`\\([A-Za-z]+)`", line):
                    numbers[macro] = current
    if not figures or not tables or not numbers:
        raise BuildError(f"could not parse the figure, table and number lists of {path}")
    return figures, tables, numbers


def thesis_sources(thesis_dir: Path) -> list[Path]:
    """The thesis's .tex files: the top-level ones, then the chapters in the order thesis.tex reads them (so the
    artefacts they use are listed in the order the reader meets them), then any chapter it does not read."""
    main = thesis_dir / "thesis.tex"
    text = re.sub(r"(?<!\\)%.*", "", main.read_text(encoding="utf-8")) if main.is_file() else ""
    order = {name: i for i, name in enumerate(re.findall(r"\\input\{chapters/([^}]+?)(?:\.tex)?\}", text))}
    chapters = sorted((thesis_dir / "chapters").glob("*.tex"), key=lambda p: (order.get(p.stem, len(order)), p.name))
    return sorted(thesis_dir.glob("*.tex")) + chapters


def used_artefacts(sources: list[Path]) -> tuple[list[str], list[str], set[str]]:
    """Figures, tables and macros referenced by the thesis sources (comments stripped)."""
    figs: list[str] = []
    tabs: list[str] = []
    macros: set[str] = set()
    for src in sources:
        text = re.sub(r"(?<!\\)%.*", "", src.read_text(encoding="utf-8"))
        for name in re.findall(r"\\ProfFig(?:\[[^\]]*\])?\{([^}]+)\}", text):
            if name not in figs and not name.startswith("#"):
                figs.append(name)
        for name in re.findall(r"\\ProfTable\{([^}]+)\}", text):
            if name not in tabs and not name.startswith("#"):
                tabs.append(name)
        macros.update(re.findall(r"\\([A-Za-z]+)", text))
    return figs, tabs, macros


def defined_numbers(numbers_tex: Path) -> dict[str, str]:
    """Macros defined in numbers.tex (\\newcommand / \\def / \\providecommand), name -> body text."""
    text = numbers_tex.read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for m in re.finditer(r"\\(?:re)?(?:newcommand|providecommand)\*?\s*\{?\\([A-Za-z]+)\}?\s*\{(.*?)\}\s*$",
                         text, flags=re.M):
        out[m.group(1)] = m.group(2)
    for m in re.finditer(r"\\def\\([A-Za-z]+)\s*\{(.*?)\}\s*$", text, flags=re.M):
        out[m.group(1)] = m.group(2)
    return out


def check_inputs(fig_dir: Path, contract, sources) -> tuple[list[str], list[str]]:
    """Raise BuildError listing every missing file/macro with the notebook that makes it."""
    fig_nb, tab_nb, num_nb = contract
    figs, tabs, macros = used_artefacts(sources)
    macros = macros | DERIVED_FROM
    problems: list[str] = []
    for name in figs:
        if name not in fig_nb:
            problems.append(f"figure '{name}' is used by the thesis but is not in docs/artefacts.md")
        elif not (fig_dir / f"{name}.pdf").is_file():
            problems.append(f"{fig_dir / (name + '.pdf')} is missing (made by notebooks/{fig_nb[name]}.py)")
    for name in tabs:
        if name not in tab_nb:
            problems.append(f"table '{name}' is used by the thesis but is not in docs/artefacts.md")
        elif not (fig_dir / "tables" / f"{name}.tex").is_file():
            problems.append(f"{fig_dir / 'tables' / (name + '.tex')} is missing (made by notebooks/{tab_nb[name]}.py)")
    numbers_tex = fig_dir / "numbers.tex"
    if not numbers_tex.is_file():
        problems.append(f"{numbers_tex} is missing (concatenated by make figures from every notebook's numbers)")
    else:
        defined = defined_numbers(numbers_tex)
        for macro in sorted(macros & set(num_nb)):
            if macro not in defined:
                problems.append(f"\\{macro} is not defined in {numbers_tex} (made by notebooks/{num_nb[macro]}.py)")
    if not (fig_dir / "provenance.json").is_file():
        problems.append(f"{fig_dir / 'provenance.json'} is missing (written by make figures)")
    if problems:
        raise BuildError("the thesis cannot be built from " + str(fig_dir) + ":\n  " + "\n  ".join(problems))
    return figs, tabs


# ------------------------------------------------------------------------------------------ generated TeX
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
                "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\textasciitilde{}"}


def tex_escape(value) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(value))


def tex_path(path: Path) -> str:
    """An absolute path usable inside \\input / \\includegraphics (forward slashes, no TeX specials)."""
    text = path.resolve().as_posix()
    bad = sorted(set(text) & set(" %#&{}$^~\\\""))
    if bad:
        raise BuildError(f"path {text!r} contains characters TeX cannot read in a file name: {bad}")
    return text


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    sci = re.fullmatch(r"\$?(-?[\d.]+)(?:\\times10\^\{(-?\d+)\})?\$?", text.strip())  # report.latex_sci
    if sci:
        return float(sci.group(1)) * 10.0 ** int(sci.group(2) or 0)
    cleaned = re.sub(r"[\s,{}~]|\\,|\\%|\\thinspace", "", text).rstrip("%")
    try:
        return float(cleaned)
    except ValueError:
        return None


def comparison_macros(defined: dict[str, str]) -> list[str]:
    lines = []
    for name, (first, second) in COMPARISONS.items():
        a, b = _number(defined.get(first)), _number(defined.get(second))
        if a is None or b is None:
            body = "无法比较"
        elif a > b:
            body = "#2"
        elif a < b:
            body = "#3"
        else:
            body = "#1"
        lines.append(f"\\newcommand{{\\{name}}}[3][相同]{{{body}}}")
    full, fifty = _number(defined.get("StepsTimeFull")), _number(defined.get("StepsTimeFifty"))
    speedup = f"{full / fifty:.1f}" if full is not None and fifty else "—"
    lines.append(f"\\newcommand{{\\StepsSpeedup}}{{{speedup}}}")
    gflops = r"约 \CifarGFlops{} GFLOPs" if _number(defined.get("CifarGFlops")) is not None else r"\CifarGFlops"
    lines.append(f"\\newcommand{{\\CifarGFlopsText}}{{{gflops}}}")
    cond, uncond = defined.get("CondDatasetLabel"), defined.get("UncondDatasetLabel")
    both = r"\CondDatasetLabel" if cond == uncond else r"\CondDatasetLabel{} 与 \UncondDatasetLabel"
    lines.append(f"\\newcommand{{\\BothDatasetLabels}}{{{both}}}")
    for which in ("Cond", "Uncond"):  # the English abstract's labels, from the Chinese display labels
        label = defined.get(f"{which}DatasetLabel")
        lines.append(f"\\newcommand{{\\{which}DatasetLabelEn}}{{{_LABELS.dataset_label_en(label) if label else '—'}}}")
    return lines


def tex_config_number(value) -> str:
    """A configuration value as TeX that works in text and maths: 1e-4 -> ``\\ensuremath{10^{-4}}``,
    2e-4 -> ``\\ensuremath{2\\times10^{-4}}``, 800000 -> ``800\\,000``, [16] -> ``16``, 0.9999 -> ``0.9999``."""
    if isinstance(value, (list, tuple)):
        return ", ".join(tex_config_number(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BuildError(f"configuration value {value!r} is not a number")
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        digits = f"{int(value):d}"
        return digits if len(digits) <= 4 else f"{int(value):,}".replace(",", "\\,")
    if value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.0e}".split("e")
        power = f"10^{{{int(exponent)}}}"
        body = power if mantissa == "1" else mantissa + "\\times" + power
        return f"\\ensuremath{{{body}}}"
    return f"{value:g}"


def config_macros(configs_dir: Path) -> list[str]:
    """``\\newcommand`` lines for :data:`CONFIG_VALUES`, read from the YAML configurations."""
    import yaml

    loaded: dict[str, dict] = {}
    lines = []
    for macro, (name, key) in CONFIG_VALUES.items():
        path = configs_dir / name
        if name not in loaded:
            if not path.is_file():
                raise BuildError(f"configuration {path} is missing (the thesis quotes {key} from it)")
            loaded[name] = yaml.safe_load(path.read_text(encoding="utf-8"))
        value = loaded[name]
        for part in key.split("."):
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise BuildError(f"{path}: no value for {key} (the thesis quotes it as \\{macro})") from None
        lines.append(f"\\newcommand{{\\{macro}}}{{{tex_config_number(value)}}}")
    return lines


# Constants of the code the text quotes: macro -> (source file, module-level name).
CODE_VALUES = {
    "CodeGroupNormGroups": ("diffusion/unet.py", "GROUPNORM_GROUPS"),
    "CodeGroupNormEps": ("diffusion/unet.py", "GROUPNORM_EPS"),
}


def code_macros(repo: Path) -> list[str]:
    """``\\newcommand`` lines for :data:`CODE_VALUES`, read (not imported) from the module sources."""
    lines = []
    for macro, (rel, name) in CODE_VALUES.items():
        path = repo / rel
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        m = re.search(rf"^{name}\s*(?::[^=]*)?=\s*([-+0-9.eE]+)\s*(?:#.*)?$", text, flags=re.M)
        if not m:
            raise BuildError(f"{path}: no numeric module-level {name} (the thesis quotes it as \\{macro})")
        value = float(m.group(1))
        lines.append(f"\\newcommand{{\\{macro}}}{{{tex_config_number(int(value) if value.is_integer() else value)}}}")
    return lines


def guidance_macros(defined: dict[str, str]) -> list[str]:
    r"""``\IfBestGuidanceIsDefault{same}{different}``: whether the sweep's best w is the preset default."""
    best, default = _number(defined.get("BestGuidanceScale")), _number(defined.get("DefaultGuidanceScale"))
    body = "#1" if best is not None and best == default else "#2"
    return [f"\\newcommand{{\\IfBestGuidanceIsDefault}}[2]{{{body}}}"]


SEEDS_DIR = "seeds"
"""``figures/<profile>/seeds/train-seed-<N>.tex``: the numbers.tex of a regeneration of the profile whose models were
retrained with ``train.seed = N`` (``tools/reproduce_check.py --train-seed N --record``), committed with the
figures. The thesis states as findings only the differences whose interval excludes 0, with the same sign, in the
main run and in every such regeneration (:func:`finding_macros`). A ``train-seed-<N>.withdrawn.json`` beside it,
``{"numbers": [macro names], "reason": "...", "reason_zh": "..."}``, withdraws numbers of that run found to be
measured wrongly after it was recorded: they count as not measured in that run until it is recorded again."""
WITHDRAWN_SUFFIX = ".withdrawn.json"


def withdrawn_numbers(fig_dir: Path) -> dict[int, dict]:
    """{training seed: {"numbers": [...], "reason": ..., "reason_zh": ...}} of the withdrawals under
    ``fig_dir/seeds`` (see :data:`SEEDS_DIR`); a malformed file is an error, not an empty withdrawal."""
    out = {}
    for path in sorted((fig_dir / SEEDS_DIR).glob("train-seed-*" + WITHDRAWN_SUFFIX)):
        m = re.fullmatch(r"train-seed-(\d+)", path.name.removesuffix(WITHDRAWN_SUFFIX))
        if not m:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path} is not valid JSON: {exc}") from exc
        names = data.get("numbers") if isinstance(data, dict) else None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
                and all(isinstance(data.get(k), str) and data[k].strip() for k in ("reason", "reason_zh"))):
            raise BuildError(f"{path}: expected {{\"numbers\": [macro names], \"reason\": \"...\", "
                             "\"reason_zh\": \"...\"}")
        out[int(m.group(1))] = data
    return out

def seed_runs(fig_dir: Path, withdrawn: dict[int, dict] | None = None) -> dict[int, dict[str, str]]:
    """{training seed: macros} of the recorded regenerations under ``fig_dir/seeds`` (see :data:`SEEDS_DIR`),
    less the numbers withdrawn from them (``withdrawn``, else read by :func:`withdrawn_numbers`)."""
    runs = {}
    withdrawn = withdrawn_numbers(fig_dir) if withdrawn is None else withdrawn
    for path in sorted((fig_dir / SEEDS_DIR).glob("train-seed-*.tex")):
        m = re.fullmatch(r"train-seed-(\d+)", path.stem)
        if m:
            gone = set(withdrawn.get(int(m.group(1)), {}).get("numbers", ()))
            numbers = defined_numbers(path)
            if unknown := gone - set(numbers):
                raise BuildError(f"{path.stem}{WITHDRAWN_SUFFIX} withdraws numbers {path.name} does not define: "
                                 f"{', '.join(sorted(unknown))}")
            runs[int(m.group(1))] = {k: v for k, v in numbers.items() if k not in gone}
    return runs


def finding_macros(defined: dict[str, str], runs: dict[int, dict[str, str]],
                   withdrawn: dict[int, dict] | None = None) -> list[str]:
    r"""What the text may state as a finding, per difference macro (a name containing ``Diff``, value
    ``d [low, high]``; ``\Finding<X>`` for ``<X>Diff``, ``\Finding<Name>`` for ``AccDiffOneZero`` and the like):
    ``\Finding<X>{above}{below}{neither}`` expands to ``above`` when the interval lies above 0 in the main run
    and in every recorded regeneration with another training seed (``runs``), to ``below`` when below 0 in all,
    and to ``neither`` otherwise (an interval containing 0 in some run, runs disagreeing, a run without the
    number, or no interval at all, e.g. "n/a"), with ``\SeedLostNote`` (``thesis/findings.tex``) where the
    main run's interval excludes 0 and another run's does not, so that the text beside the main run's interval
    says why it is not a finding, or ``\SeedUncheckedNote`` where it excludes 0 and another run lacks the
    number (withdrawn, ``withdrawn``): not checked is not lost; ``\FindingNoted`` puts the note before the
    reading's closing 。；.; (the English abstract has its own notes); the intervals are read as
    ``tools/reproduce_check.py`` reads them.
    ``\SeedValue{Name}`` is the value of macro ``Name`` in the first other-seed run (``—`` when none),
    ``\SeedShift{Name}`` how far it moved from the main run (other − main, with the main value's decimals; ``—``
    when either is not a number), ``\SeedHeld{Name}`` for a difference whether its side of 0 was the same in
    both (是/否), ``\SeedHeldCount`` of ``\SeedDiffCount`` differences kept their side of 0 in every run,
    ``\SeedRunCount`` the number of such runs, ``\SeedRunList`` their seeds,
    ``\IfSeedRuns{yes}{no}``. The plain reading of the runs: ``\SeedFindingsKept`` lists (as
    ``\FindingName{<X>Diff}``, joined by 、) the differences whose interval excludes 0 on the same side in every
    run, ``\SeedFindingsLost`` those excluding 0 in the main run but not on that side in some other run,
    ``\SeedFindingsGained`` those containing 0 in the main run and excluding it in some other run,
    ``\SeedFindingsUnchecked`` those excluding 0 in the main run that some other run lacks; each with a
    ``…Count`` (all empty without other runs). A difference some run lacks is left out of ``\SeedDiffCount``.
    ``\SeedWithdrawnCount`` counts the numbers withdrawn from the runs and ``\SeedWithdrawnReason`` says why
    (the first withdrawal's ``reason_zh``; empty without one)."""
    lines = []
    side = {}
    groups = {"Kept": [], "Lost": [], "Gained": [], "Unchecked": []}
    for name, text in defined.items():
        if "Diff" not in name:
            continue
        main, *others = [_REPRODUCE.side_of_zero(_REPRODUCE.parse_value(t or "")[1])
                         for t in [text, *(run.get(name) for run in runs.values())]]
        unchecked = any(name not in run for run in runs.values())
        sides = {main, *others}
        if not unchecked:
            side[name] = len(sides) == 1
        excluded = bool(others) and main in ("above", "below")  # a finding of the main run, checked by other runs
        if excluded and unchecked:
            groups["Unchecked"].append(name)
        elif excluded:
            groups["Kept" if side[name] else "Lost"].append(name)
        elif others and main == "contains" and {"above", "below"} & set(others):
            groups["Gained"].append(name)
        note = ("\\SeedUncheckedNote" if unchecked else "\\SeedLostNote") if excluded and len(sides) > 1 else ""
        neither = f"\\FindingNoted{{#3}}{{{note}}}" if note else "#3"
        body = "#1" if sides == {"above"} else "#2" if sides == {"below"} else neither
        lines.append(f"\\newcommand{{\\Finding{name.removesuffix('Diff')}}}[3]{{{body}}}")
    for group, names in groups.items():
        listed = "、".join(f"\\FindingName{{{name}}}" for name in names)
        lines.append(f"\\newcommand{{\\SeedFindings{group}}}{{{listed}}}")
        lines.append(f"\\newcommand{{\\SeedFindings{group}Count}}{{{len(names)}}}")
    first = next(iter(runs.values()), {})
    for name, text in first.items():
        lines.append(f"\\expandafter\\def\\csname seedvalue@{name}\\endcsname{{{typeset_minus(text)}}}")
        shift = seed_shift(defined.get(name), text)
        if shift is not None:
            lines.append(f"\\expandafter\\def\\csname seedshift@{name}\\endcsname{{{shift}}}")
        if name in side:
            lines.append(f"\\expandafter\\def\\csname seedheld@{name}\\endcsname{{{'是' if side[name] else '否'}}}")
    lines.append(f"\\newcommand{{\\SeedDiffCount}}{{{len(side)}}}")
    lines.append(f"\\newcommand{{\\SeedHeldCount}}{{{sum(side.values())}}}")
    for macro, key in (("SeedValue", "seedvalue"), ("SeedShift", "seedshift"), ("SeedHeld", "seedheld")):
        lines.append(f"\\newcommand{{\\{macro}}}[1]{{\\ifcsname {key}@#1\\endcsname\\csname {key}@#1\\endcsname"
                     f"\\else —\\fi}}")
    gone = [n for w in (withdrawn or {}).values() for n in w["numbers"]]
    lines.append(f"\\newcommand{{\\SeedWithdrawnCount}}{{{len(gone)}}}")
    reason = next((w["reason_zh"] for w in (withdrawn or {}).values()), "")
    lines.append(f"\\newcommand{{\\SeedWithdrawnReason}}{{{tex_escape(reason)}}}")
    lines.append(f"\\newcommand{{\\SeedRunCount}}{{{len(runs)}}}")
    lines.append(f"\\newcommand{{\\SeedRunList}}{{{'、'.join(str(seed) for seed in runs) or '—'}}}")
    lines.append(f"\\newcommand{{\\IfSeedRuns}}[2]{{{'#1' if runs else '#2'}}}")
    return lines


def seed_shift(main: str | None, other: str | None) -> str | None:
    """``other − main`` of two macro values (``0.372 [0.327, 0.417]``, ``48.40``), signed, with as many decimals
    as the main value prints (thousands commas and a trailing ``%`` allowed); None when either is not a number."""
    values = [_REPRODUCE.parse_value(t or "")[0] for t in (main, other)]
    if None in values:
        return None
    decimals = len(re.match(r"\s*[-−]?[\d,]*\.?(\d*)", main).group(1))  # parse_value read a number: main is one
    shift = round(values[1] - values[0], decimals)
    return f"{shift:+.{decimals}f}".replace("-", "−") if shift != 0 else f"{0:.{decimals}f}"


def load_provenance(path: Path) -> dict[str, dict]:
    """provenance.json as {artefact name: record}; accepts a mapping or a list of records."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("artefacts"), (dict, list)):
        data = data["artefacts"]
    records: dict[str, dict] = {}
    if isinstance(data, dict):
        for key, rec in data.items():
            if isinstance(rec, dict):
                records[str(rec.get("name") or rec.get("artefact") or key)] = rec
    elif isinstance(data, list):
        for rec in data:
            if isinstance(rec, dict) and (rec.get("name") or rec.get("artefact")):
                records[str(rec.get("name") or rec.get("artefact"))] = rec
    else:
        raise BuildError(f"{path}: expected a JSON object or list of artefact records")
    return records


def _field(rec: dict, *keys):
    for key in keys:
        if rec.get(key) not in (None, ""):
            return rec[key]
    return None


def _display_label(label):
    """A dataset label as the Chinese text shows it ("MNIST-5k at 16×16" -> "MNIST-5k（16×16）"), for
    provenance records written before the notebooks wrote display labels; " / "-joined lists too."""
    if not isinstance(label, str):
        return label
    return " / ".join(dict.fromkeys(_LABELS.dataset_label_zh(part.strip()) for part in label.split(" / ")))


def _short_name(name: str) -> str:
    """Artefact key without folder or extension ('tables/hparams.tex' -> 'hparams')."""
    return Path(name).stem if "/" in name or "." in name else name


def is_dirty(rec: dict) -> bool:
    """Whether an artefact was made from a working tree with uncommitted changes (the ``dirty`` field, or a
    commit recorded as ``<hash>-dirty``)."""
    commit = str(_field(rec, "commit", "git_commit", "git") or "")
    return bool(rec.get("dirty")) or commit.endswith("-dirty")


PROVENANCE_FIELDS = (("commit", ("commit", "git_commit", "git")), ("随机种子", ("seed",)), ("设备", ("device",)),
                     ("PyTorch", ("torch_version", "torch")))
"""Provenance fields that are usually the same for every artefact of a profile: stated once when they are."""


def _provenance_value(rec: dict, keys) -> str:
    value = _field(rec, *keys)
    if value is None:
        return "—"
    if keys[0] == "commit" and re.fullmatch(r"[0-9a-f]{13,}(-dirty)?", str(value)):
        return str(value)[:10] + ("-dirty" if str(value).endswith("-dirty") else "")
    return str(value)


def provenance_tex(records: dict[str, dict], figs: list[str], tabs: list[str]) -> str:
    """The appendix body: one table row per figure and table the thesis uses, keyed by its number
    (``\\ref{prof:fig:<name>}`` or ``prof:tab:<name>``, set by ``\\ProfFig``/``\\ProfTable`` in macros.tex), with the notebook that made it,
    its data and the run's date; the fields shared by every artefact (commit, seed, device, torch) in one sentence
    before it, the others as columns. A note comes first when any artefact was made from a working tree with
    uncommitted changes. The full configuration of each artefact stays in provenance.json (named, not printed)."""
    by_short = {}
    for name, rec in records.items():
        by_short.setdefault(_short_name(name), rec)
    used = [(kind, name, records.get(name) or by_short.get(name)) for kind, names in (("图", figs), ("表", tabs))
            for name in names]
    dirty = [rec for _, _, rec in used if rec is not None and is_dirty(rec)]
    out = []
    if dirty:
        out.append(f"\\noindent\\textbf{{注意：}}正文所用的 {len(used)} 项图表中有 {len(dirty)} 项是在工作区含有未提交修改"
                   "（dirty）时生成的（下表以“*”标出）。这些图表所用的代码与记录的代码提交不完全一致，不能仅凭该提交精确复现。\\par\\medskip")
    else:
        out.append("正文所用的全部图表都是在工作区没有未提交修改时生成的，可由记录的代码提交复现。")
    present = [rec for _, _, rec in used if rec is not None]
    shared, varying = [], []
    for title, keys in PROVENANCE_FIELDS:
        values = {_provenance_value(rec, keys) for rec in present}
        (shared if len(values) == 1 else varying).append((title, keys, next(iter(values)) if len(values) == 1 else None))
    shared = [(title, keys, value) for title, keys, value in shared if value != "—"]  # unrecorded: not printed
    if shared and present:
        out.append("全部图表共同的来源：" + "；".join(f"{title} {tex_escape(value)}" for title, _, value in shared) + "。")
    out.append("每项图表的完整配置（模型、采样器、步数、样本数）记录在仓库的 "
               "\\texttt{figures/\\ProfileName/provenance.json} 中。\\par\\medskip")
    cols = ["图表", "生成它的实验脚本", "数据集"] + [title for title, _, _ in varying] + ["生成时间（UTC）"]
    # the dataset column wraps: two datasets side by side ("CelebA（6k 子集） / CIFAR-10（JPEG q75 有损副本）") would
    # push the table past the text width
    spec = "ll" + r">{\raggedright\arraybackslash}p{5.9cm}" + "l" * (len(cols) - 3)
    head = " & ".join(cols) + r" \\"
    # a longtable: with one row per figure and table it is longer than a page, and a tabular would run off it
    out += [r"{\small", r"\begin{longtable}{" + spec + "}", r"\toprule", head, r"\midrule", r"\endfirsthead",
            r"\toprule", head, r"\midrule", r"\endhead", r"\bottomrule", r"\endlastfoot"]
    for kind, name, rec in used:
        ref = f"{kind}~\\ref{{prof:{'fig' if kind == '图' else 'tab'}:{name}}}"
        if rec is None:
            out.append(f"{ref} & \\multicolumn{{{len(cols) - 1}}}{{l}}{{provenance.json 中没有该产物的记录}} \\\\")
            continue
        created = str(_field(rec, "created", "created_utc", "time", "timestamp") or "—").replace("T", " ").rstrip("Z")
        row = [ref + ("*" if is_dirty(rec) else ""), tex_escape(_field(rec, "notebook") or "—"),
               tex_escape(_display_label(_field(rec, "dataset_label", "dataset", "data")) or "—")]
        row += [tex_escape(_provenance_value(rec, keys)) for _, keys, _ in varying]
        row.append(tex_escape(created[:16]))
        out.append(" & ".join(row) + r" \\")
    out += [r"\end{longtable}\par}"]
    return "\n".join(out) + "\n"


_HYPHEN_MINUS = re.compile(r"(?<![\w)\]}.\\-])-(?=\.?\d)(?![\d.]*\s*(?:pt|em|ex|cm|mm|bp|in|sp|mu)\b)")
"""A hyphen that is a minus sign: before a digit, and after neither a word character (``CIFAR-10``, ``DDIM-50``,
``2026-12-06``), a closing bracket, a dot, a backslash nor another hyphen (``--``); at the start, after a space,
``[``, ``(``, ``{``, ``$`` or ``=``; never a dimension (``\\hspace{-2pt}``)."""


def typeset_minus(text: str) -> str:
    """``text`` with every minus-sign hyphen (see :data:`_HYPHEN_MINUS`) replaced by U+2212 (typeset from the math
    font by unicode.tex): the notebooks print ``-0.27 [-0.31, -0.23]`` with ASCII hyphens, which Latin Modern sets
    as a short dash. Comment lines (``%``) are left as they are."""
    return "".join(line if line.lstrip().startswith("%") else _HYPHEN_MINUS.sub("−", line)
                   for line in text.splitlines(keepends=True))


def typeset_inputs(fig_dir: Path, build_dir: Path) -> None:
    """Copy ``numbers.tex`` and ``tables/*.tex`` of ``fig_dir`` into ``build_dir`` through :func:`typeset_minus`;
    the thesis inputs these copies (the figures themselves stay as the notebooks wrote them)."""
    (build_dir / "numbers.tex").write_text(typeset_minus((fig_dir / "numbers.tex").read_text(encoding="utf-8")),
                                           encoding="utf-8")
    tables = build_dir / "tables"
    if tables.is_dir():
        shutil.rmtree(tables)
    tables.mkdir(parents=True)
    for table in sorted((fig_dir / "tables").glob("*.tex")):
        (tables / table.name).write_text(typeset_minus(table.read_text(encoding="utf-8")), encoding="utf-8")


def profile_tex(fig_dir: Path, build_dir: Path, contract, defined: dict[str, str],
                records: dict[str, dict]) -> str:
    fig_nb, tab_nb, _ = contract
    notebooks_rel = os.path.relpath(REPO / "notebooks", build_dir.resolve()).replace(os.sep, "/")
    lines = [
        "% Generated by tools/build_thesis.py; do not edit.",
        f"\\newcommand{{\\FigDir}}{{{tex_path(fig_dir)}/}}",
        f"\\newcommand{{\\TabDir}}{{{tex_path(build_dir)}/tables/}}",  # typeset copies (typeset_inputs)
        f"\\input{{{tex_path(build_dir / 'numbers.tex')}}}",
        r"\providecommand{\SmokeMarker}{}",
        f"\\newcommand{{\\NotebookRelDir}}{{{notebooks_rel}}}",
    ]
    by_short = {_short_name(n): r for n, r in records.items()}
    for name, nb in list(fig_nb.items()) + list(tab_nb.items()):
        if not re.fullmatch(r"\d\d_[a-z0-9_]+", nb):
            continue  # e.g. the provenance table, made by `make figures` itself
        lines.append(f"\\expandafter\\def\\csname nbfile@{name}\\endcsname{{{nb}.py}}")
        lines.append(f"\\expandafter\\def\\csname nbdisp@{name}\\endcsname{{{tex_escape(nb)}.py}}")
        rec = records.get(name) or by_short.get(name)
        label = _display_label(_field(rec, "dataset_label", "dataset")) if rec else None
        if label:
            lines.append(f"\\expandafter\\def\\csname nbdata@{name}\\endcsname{{{tex_escape(label)}}}")
    lines += comparison_macros(defined)
    lines += guidance_macros(defined)
    withdrawn = withdrawn_numbers(fig_dir)
    lines += finding_macros(defined, seed_runs(fig_dir, withdrawn), withdrawn)
    lines += config_macros(REPO / "configs")
    lines += code_macros(REPO)
    lines.append(f"\\addbibresource{{{tex_path(THESIS_DIR / 'references.bib')}}}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- building
def choose_profile(figures_dir: Path, profile: str | None) -> str:
    if profile:
        if not (figures_dir / profile).is_dir():
            raise BuildError(f"no figures for profile '{profile}' in {figures_dir / profile}; "
                             f"run `make figures PROFILE={profile}` first")
        return profile
    for candidate in PROFILE_ORDER:
        if (figures_dir / candidate / "numbers.tex").is_file():
            return candidate
    raise BuildError(f"no figures profile found under {figures_dir} (looked for {', '.join(PROFILE_ORDER)}); "
                     "run `make figures` (quick profile) first")


def check_tools() -> None:
    missing = [tool for tool in TEX_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"TeX tools not found: {', '.join(missing)}. Install them (as root) with:\n  {APT_COMMAND}")


VBOX_TOLERANCE_PT = 5.0
"""A page body may exceed the text area by this much (a rounding of glue) before the build fails."""


def check_log(log_path: Path, blg_path: Path) -> list[str]:
    """Problems that must fail the build: undefined refs/citations, missing glyphs, a page whose body runs off
    the page, biber errors."""
    problems = []
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    for pattern, what in (
        (r"LaTeX Warning: Reference `([^']*)' on page \d+ undefined", "undefined reference"),
        (r"LaTeX Warning: Citation `([^']*)' on page \d+ undefined", "undefined citation"),
        (r"Package biblatex Warning: The following entry could not be found\s*\(biblatex\)\s*in the database:\s*"
         r"\(biblatex\)\s*(\S+)", "citation not in references.bib"),
        (r"Missing character: There is no (\S+ \(U\+[0-9A-Fa-f]+\))", "missing glyph"),
    ):
        for hit in sorted(set(re.findall(pattern, log))):
            problems.append(f"{what}: {hit}")
    for height in re.findall(r"^Overfull \\vbox \(([\d.]+)pt too high\) has occurred while \\output is active",
                             log, flags=re.M):
        if float(height) > VBOX_TOLERANCE_PT:  # a page whose body is taller than the page: text runs off it
            problems.append(f"a page is {height}pt taller than the text area (Overfull \\vbox while \\output is "
                            "active): its last lines are cut off; let the material break across pages")
    if "There were undefined references" in log and not any("undefined" in p for p in problems):
        problems.append("LaTeX reports undefined references")
    if "Please (re)run Biber" in log or "Please rerun LaTeX" in log:
        problems.append("the document did not converge (biblatex asks for another run)")
    if blg_path.is_file():
        for line in blg_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("ERROR") or "] ERROR" in line:
                problems.append(f"biber: {line.strip()}")
    return problems


def figures_note(profile: str, records: dict[str, dict], just_made: str | None) -> str | None:
    """One line naming the profile and commit(s) of the figures in the PDF when they are not the profile
    ``just_made`` (what ``make all`` just regenerated), and how to build from those instead."""
    if not just_made or just_made == profile:
        return None
    commits = sorted({str(r.get("git_commit", "?"))[:10] + ("-dirty" if r.get("dirty") else "")
                      for r in records.values()})
    shown = ", ".join(commits[:3]) + (f" and {len(commits) - 3} more" if len(commits) > 3 else "")
    return (f"note: thesis.pdf shows the committed figures/{profile} (made at commit {shown}), not the "
            f"figures/{just_made} this run just made; `make thesis PROFILE={just_made}` builds it from those")


def build(profile: str | None, figures_dir: Path, build_dir: Path, quiet: bool = False,
          just_made: str | None = None) -> Path:
    start = time.monotonic()
    figures_dir = figures_dir.resolve()
    build_dir = build_dir.resolve()
    profile = choose_profile(figures_dir, profile)
    fig_dir = figures_dir / profile
    contract = parse_contract(REPO / "docs" / "artefacts.md")
    sources = thesis_sources(THESIS_DIR)
    figs, tabs = check_inputs(fig_dir, contract, sources)
    check_tools()

    build_dir.mkdir(parents=True, exist_ok=True)
    defined = defined_numbers(fig_dir / "numbers.tex")
    records = load_provenance(fig_dir / "provenance.json")
    (build_dir / "profile.tex").write_text(profile_tex(fig_dir, build_dir, contract, defined, records),
                                          encoding="utf-8")
    (build_dir / "provenance.tex").write_text(provenance_tex(records, figs, tabs), encoding="utf-8")
    typeset_inputs(fig_dir, build_dir)

    env = dict(os.environ)
    env["TEXINPUTS"] = f"{build_dir}{os.pathsep}{THESIS_DIR}{os.pathsep}" + env.get("TEXINPUTS", "")
    cmd = ["latexmk", "-xelatex", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
           f"-outdir={build_dir}", "thesis.tex"]
    print(f"building thesis from {fig_dir} (profile {profile}) into {build_dir}", flush=True)
    proc = subprocess.run(cmd, cwd=THESIS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        errors = []
        log = build_dir / "thesis.log"
        if log.is_file():
            errors = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
                      if ln.startswith("!") or re.match(r"^\S+\.tex:\d+:", ln)]
        raise BuildError(f"latexmk failed (exit {proc.returncode}); see {log}\n" + "\n".join(errors[:20])
                         + "\n--- latexmk output (tail) ---\n" + tail, status=1)
    if not quiet:
        print("\n".join(proc.stdout.splitlines()[-5:]))
    problems = check_log(build_dir / "thesis.log", build_dir / "thesis.blg")
    if problems:
        raise BuildError("thesis built but the log shows problems:\n  " + "\n  ".join(problems), status=1)
    pdf = build_dir / "thesis.pdf"
    overfull = len(re.findall(r"^Overfull \\hbox", (build_dir / "thesis.log").read_text(errors="replace"),
                              flags=re.M))
    pages = _page_count(pdf)
    print(f"wrote {pdf} ({pages} pages, profile {profile}, {time.monotonic() - start:.1f} s"
          + (f", {overfull} overfull hbox warnings" if overfull else "") + ")")
    note = figures_note(profile, records, just_made)
    if note:
        print(note)
    return pdf


def _page_count(pdf: Path) -> str:
    if shutil.which("pdfinfo") is None:
        return "?"
    out = subprocess.run(["pdfinfo", str(pdf)], stdout=subprocess.PIPE, text=True, errors="replace").stdout
    m = re.search(r"^Pages:\s+(\d+)", out, flags=re.M)
    return m.group(1) if m else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_ORDER, default=os.environ.get("PROFILE") or None,
                        help="figures profile (default: the best present, full > gpu > cpu > long > quick > smoke)")
    parser.add_argument("--figures-dir", type=Path, default=REPO / "figures",
                        help="folder holding <profile>/ artefact folders (default: figures/)")
    parser.add_argument("--build-dir", type=Path, default=THESIS_DIR / "build",
                        help="output folder for thesis.pdf and LaTeX auxiliaries (default: thesis/build/)")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    parser.add_argument("--just-made", choices=PROFILE_ORDER, default=None,
                        help="the profile whose figures were just regenerated (make all): if the PDF is built "
                             "from another one, a last line says so")
    args = parser.parse_args(argv)
    try:
        build(args.profile, args.figures_dir, args.build_dir, quiet=args.quiet, just_made=args.just_made)
    except BuildError as exc:
        print(f"build_thesis: error: {exc}", file=sys.stderr)
        return exc.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
