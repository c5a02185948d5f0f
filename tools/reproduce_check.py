"""Regenerate a profile's figures from a clean clone of HEAD and compare its numbers with the committed ones.

    python tools/reproduce_check.py [--profile quick] [--venv .venv] [--keep]   # make reproduce-check
    python tools/reproduce_check.py --compare COMMITTED.tex PRODUCED.tex         # the comparison only

The check clones this repository's HEAD into a temporary folder, runs ``make figures PROFILE=<profile>``
there with an empty cache (``DDPM_CACHE_DIR`` and ``DDPM_CACHE`` inside the temporary folder; the virtual
environment of this checkout is reused through ``VENV=...``, never reinstalled; ``DDPM_RETRAIN=1``, so the
models are trained again rather than read from the committed ``weights/``) and compares the
``figures/<profile>/numbers.tex`` it produced with the committed one, macro by macro.

Every number must match as an exact string: the pipeline is deterministic on the CPU. The exceptions are
timing and machine numbers, recognised by a word of their CamelCase name (:data:`TIMING_WORDS`:
``StepsTimeFull``, ``CondTrainMinutes``, ``DeviceName``, ...); they are listed but never fail the check.
A mismatch, a missing or an extra number prints a table and exits with status 1; a failing run exits 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMING_WORDS = frozenset({"Time", "Times", "Timing", "Seconds", "Sec", "Minutes", "Hours", "Wall", "Threads",
                          "Device", "Throughput", "Speed", "Speedup"})
"""Words of a macro name that mark a timing or machine number (compared, never required to match)."""

_NEWCOMMAND = re.compile(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}\s*$")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def parse_numbers(text: str) -> dict[str, str]:
    r"""``{name: value}`` of every ``\newcommand{\Name}{value}`` line (comments and other lines ignored);
    ``ValueError`` when a name is defined twice."""
    numbers: dict[str, str] = {}
    for line in text.splitlines():
        match = _NEWCOMMAND.match(line.strip())
        if match:
            name, value = match.groups()
            if name in numbers:
                raise ValueError(f"numbers.tex defines \\{name} twice")
            numbers[name] = value
    return numbers


def is_timing(name: str) -> bool:
    """Whether a macro name has a timing or machine word (``StepsTimeFull``: yes; ``NNMinDistance``: no)."""
    return any(word in TIMING_WORDS for word in _WORD.findall(name))


def compare(committed: dict[str, str], produced: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """Rows ``(name, committed, produced, status)`` for every name in either, in committed order then new
    ones; status is ``same``, ``DIFFERS``, ``MISSING`` (not produced), ``EXTRA`` (not committed) or
    ``timing`` (a timing/machine number, never a failure)."""
    rows = []
    for name in list(committed) + [n for n in produced if n not in committed]:
        old, new = committed.get(name, "--"), produced.get(name, "--")
        if is_timing(name):
            status = "timing"
        elif name not in produced:
            status = "MISSING"
        elif name not in committed:
            status = "EXTRA"
        else:
            status = "same" if old == new else "DIFFERS"
        rows.append((name, old, new, status))
    return rows


FAILING = ("DIFFERS", "MISSING", "EXTRA")


def format_table(rows: list[tuple[str, str, str, str]], only_failing: bool = False) -> str:
    """A plain-text table of ``rows`` (all of them, or only the failing ones and the timing numbers)."""
    shown = [r for r in rows if not only_failing or r[3] != "same"]
    header = ("number", "committed", "produced", "status")
    widths = [max(len(header[i]), *(len(r[i]) for r in shown)) if shown else len(header[i]) for i in range(4)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in shown]
    return "\n".join(out)


def report(committed_text: str, produced_text: str, out=None) -> int:
    """Print the comparison (to ``out``, default stdout); 0 when every non-timing number matches exactly, else 1."""
    out = out or sys.stdout
    rows = compare(parse_numbers(committed_text), parse_numbers(produced_text))
    failing = [r for r in rows if r[3] in FAILING]
    timing = [r for r in rows if r[3] == "timing"]
    same = len(rows) - len(failing) - len(timing)
    if failing:
        print(format_table(rows, only_failing=True), file=out)
        print(f"\nREPRODUCTION FAILED: {len(failing)} number(s) differ, are missing or are extra; {same} match "
              f"exactly; {len(timing)} timing/machine number(s) not compared", file=out)
        return 1
    print(format_table(timing), file=out)
    print(f"\nreproduced: all {same} numbers match exactly; {len(timing)} timing/machine number(s) (above) "
          "are not compared", file=out)
    return 0


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, **kwargs)


def regenerate(root: Path, profile: str, venv: Path, work: Path) -> tuple[str, str, str]:
    """Clone ``root``'s HEAD into ``work/repo``, run ``make figures`` there with an empty cache under
    ``work``; returns (commit, committed numbers.tex, produced numbers.tex). ``RuntimeError`` on failure."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    clone = work / "repo"
    _run(["git", "clone", "--quiet", "--no-hardlinks", str(root), str(clone)], check=True)
    _run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True)
    numbers = clone / "figures" / profile / "numbers.tex"
    if not numbers.is_file():
        raise RuntimeError(f"commit {head} has no figures/{profile}/numbers.tex to compare with")
    committed = numbers.read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # a fresh make
    # DDPM_RETRAIN: committed weights (weights/<profile>/) would skip the training being reproduced
    env.update(DDPM_CACHE_DIR=str(work / "cache"), DDPM_CACHE=str(work / "cache-data"), PYTHONPATH=str(clone),
               DDPM_RETRAIN="1")
    where = _run([str(venv / "bin" / "python"), "-c", "import diffusion; print(diffusion.__file__)"],
                 cwd=clone / "notebooks", env=env, capture_output=True, text=True)
    if where.returncode != 0 or not Path(where.stdout.strip()).resolve().is_relative_to(clone.resolve()):
        raise RuntimeError(f"the virtual environment {venv} does not import the clone's diffusion package "
                           f"(got {where.stdout.strip() or where.stderr.strip()})")
    stamp = venv / ".setup-stamp"
    made = _run(["make", "-C", str(clone), "-o", str(stamp), "figures", f"PROFILE={profile}", f"VENV={venv}"],
                env=env)
    if made.returncode != 0:
        raise RuntimeError(f"make figures PROFILE={profile} failed in the clone (exit status {made.returncode}); "
                           f"see {clone / 'build' / 'notebooks' / profile}")
    return head, committed, numbers.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", help="profile to regenerate (default quick)")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv", help="virtual environment to reuse (default .venv)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and cache")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("COMMITTED", "PRODUCED"),
                    help="only compare two numbers.tex files")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.compare:
        for path in args.compare:
            if not path.is_file():
                ap.error(f"--compare: no file {path}")
        return report(*(p.read_text(encoding="utf-8") for p in args.compare))
    venv = args.venv if args.venv.is_absolute() else (Path.cwd() / args.venv)
    if not (venv / ".setup-stamp").is_file() or not (venv / "bin" / "python").is_file():
        ap.error(f"--venv: {venv} is not a set-up virtual environment (run make setup)")
    work = Path(tempfile.mkdtemp(prefix="ddpm-reproduce-"))
    try:
        head, committed, produced = regenerate(args.root.resolve(), args.profile, venv, work)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        print(f"reproduce-check: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"figures/{args.profile}/numbers.tex of commit {head[:10]} against a regeneration from an empty cache:")
    return report(committed, produced)


if __name__ == "__main__":
    sys.exit(main())
