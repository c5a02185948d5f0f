"""Regenerate a profile's figures from a clean clone of HEAD and compare its numbers with the committed ones.

    python tools/reproduce_check.py [--profile quick] [--threads N] [--isa avx2] [--seed N] [--train-seed N]
                                    [--exact] [--keep] [--work DIR]
    python tools/reproduce_check.py --compare COMMITTED.tex PRODUCED.tex [--exact]       # the comparison only

The check clones this repository's HEAD into a temporary folder, runs ``make figures PROFILE=<profile>``
there with an empty cache (``DDPM_CACHE_DIR`` and ``DDPM_CACHE`` inside the temporary folder; the virtual
environment of this checkout is reused through ``VENV=...``, never reinstalled; ``DDPM_RETRAIN=1``, so the
models are trained again rather than read from the committed ``weights/``) and compares the
``figures/<profile>/numbers.tex`` it produced with the committed one, macro by macro.

The comparison is statistical by default, because floating-point reduction order differs between CPU
families and thread counts, and training amplifies it: a regeneration elsewhere is another draw, not a copy.

* a number printed with its 95 % interval (``0.222 [0.014, 0.431]``, or a value with a companion ``…Interval``
  macro of the same words) agrees when the difference of the two runs lies within their combined
  interval: ``|b − a| ≤ sqrt(h_a² + h_b²)``, with each run's half-width on the side facing the other;
* a number without an interval agrees within :data:`REL_TOL` (10 %) of the larger magnitude;
* a difference (a name containing ``Diff``) must also keep its verdict, the side of 0 its interval lies on
  (above, below, or containing 0: what the thesis's ``\\Finding…`` wording follows); else its status is ``VERDICT``;
* every other string (labels, versions) must be identical;
* timing and machine numbers, recognised by a word of their CamelCase name (:data:`TIMING_WORDS`:
  ``StepsTimeFull``, ``CondTrainMinutes``, ``DeviceName``, ...), are listed but never compared.

Exact equality is reported on an extra line (on the same CPU model and thread count the pipeline is
deterministic, and everything matches exactly); ``--exact`` makes it the criterion. ``--threads N`` runs the
notebooks with N torch threads (``DDPM_THREADS``); on the CPUs measured here that changes no sum (convolutions
and matrix products split their work over threads, and 1 and 2 threads give the same bits). The way to rehearse
the cross-machine check on one machine is ``--isa avx2``: it caps the instruction set of PyTorch's, oneDNN's and
MKL's kernels (:data:`ISA_ENV`), and the sums then run in another order, as on a CPU family without AVX-512.
Conclusions that should survive another seed are checked by ``--seed N`` (every sampling and evaluation draw
of the notebooks reseeded; the committed trained models are used) and ``--train-seed N`` (the models retrained with ``train.seed = N`` as well): the
table then says which numbers and verdicts held. ``--record`` (with ``--train-seed N``) keeps the regeneration's
numbers as ``figures/<profile>/seeds/train-seed-N.tex`` and the table as ``train-seed-N.txt`` beside them, to be
committed: the thesis then states as findings only the differences that held in both trainings
(``tools/build_thesis.py``, ``\\Finding…``). Where retraining the profile takes longer than one sitting, its models
of seed N are trained and committed beforehand (``tools/train_profile.py --train-seed N``, resumable) and
``--use-weights`` regenerates from them; ``--use-weights`` alone takes the profile's own committed models, so that
``--threads N --use-weights`` checks everything after the training (every sample redrawn, every number recomputed)
in the time the sampling takes rather than the training's. ``--work DIR`` keeps the clone and its cache in DIR; run
again with the same DIR, an interrupted check resumes from what its cache holds, with the commit it began with
(it says so, and whether HEAD's numbers.tex is still that commit's, when HEAD has moved on). A mismatch, a missing or an extra number prints a table
and exits with status 1; a failing run exits 2.
"""

from __future__ import annotations

import argparse
import math
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


REL_TOL = 0.10
"""Relative tolerance of a number printed without an interval."""

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
_WITH_INTERVAL = re.compile(rf"^\s*({_NUM})?\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*$")
_PLAIN = re.compile(rf"^\s*({_NUM})\s*%?\s*$")
_LATEX_POWER = re.compile(rf"^\$\s*({_NUM})\s*\\times\s*10\^\{{({_NUM})\}}\s*\$$")


def _float(text: str) -> float:
    return float(text.replace(",", ""))


def parse_value(text: str) -> tuple[float | None, tuple[float, float] | None]:
    """(value, (lo, hi) or None) of a macro's text: ``v [lo, hi]``, ``[lo, hi]`` (value: the centre),
    a plain number (thousands commas, ``%``, ``1.3e-02``, ``$2.8\\times10^{-4}$``), or (None, None)."""
    text = text.replace("−", "-")  # the typographic minus reads as a minus
    m = _WITH_INTERVAL.match(text)
    if m:
        lo, hi = _float(m.group(2)), _float(m.group(3))
        return (_float(m.group(1)) if m.group(1) else (lo + hi) / 2), (lo, hi)
    m = _PLAIN.match(text)
    if m:
        return _float(m.group(1)), None
    m = _LATEX_POWER.match(text)
    if m:
        return _float(m.group(1)) * 10 ** _float(m.group(2)), None
    return None, None


def _companions(names) -> dict[str, str]:
    """``{value macro: interval macro}``: ``XInterval`` for ``X``, or an ``…Interval`` macro whose other
    words are ``X``'s in another order (``WidthNarrowCfdInterval`` for ``WidthCfdNarrow``)."""
    names = list(names)
    by_words = {}
    for name in names:
        if name.endswith("Interval"):
            by_words.setdefault(tuple(sorted(_WORD.findall(name[:-len("Interval")]))), name)
    out = {}
    for name in names:
        if name.endswith("Interval"):
            continue
        if name + "Interval" in names:
            out[name] = name + "Interval"
        elif tuple(sorted(_WORD.findall(name))) in by_words:
            out[name] = by_words[tuple(sorted(_WORD.findall(name)))]
    return out


def agree_within_intervals(a: float, ia: tuple[float, float], b: float, ib: tuple[float, float]) -> bool:
    """Whether ``b − a`` lies within the combined 95 % interval: each run's half-width on the side facing
    the other, combined as independent errors."""
    if b >= a:
        half = math.hypot(ia[1] - a, b - ib[0])
    else:
        half = math.hypot(a - ia[0], ib[1] - b)
    return abs(b - a) <= half + 1e-12


def compare(committed: dict[str, str], produced: dict[str, str], exact: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows ``(name, committed, produced, status)`` for every name in either, in committed order then new
    ones. Status: ``same`` (identical), ``agrees`` (within the combined 95 % interval), ``close`` (within
    :data:`REL_TOL`, no interval), ``DIFFERS``, ``MISSING`` (not produced), ``EXTRA`` (not committed) or
    ``timing`` (a timing/machine number, never a failure). ``exact``: identical strings only."""
    pairs_a, pairs_b = _companions(committed), _companions(produced)
    rows = []
    for name in list(committed) + [n for n in produced if n not in committed]:
        old, new = committed.get(name, "--"), produced.get(name, "--")
        if is_timing(name):
            status = "timing"
        elif name not in produced:
            status = "MISSING"
        elif name not in committed:
            status = "EXTRA"
        elif old == new:
            status = "same"
        elif exact:
            status = "DIFFERS"
        else:
            status = _statistical_status(name, old, new, committed, produced, pairs_a, pairs_b)
        rows.append((name, old, new, status))
    return rows


def _statistical_status(name, old, new, committed, produced, pairs_a, pairs_b) -> str:
    (a, ia), (b, ib) = parse_value(old), parse_value(new)
    if a is None or b is None:
        return "DIFFERS"  # a verdict, label or other string: identical or not at all
    if ia is None and ib is None and name in pairs_a and pairs_a[name] == pairs_b.get(name):
        ia, ib = parse_value(committed[pairs_a[name]])[1], parse_value(produced[pairs_b[name]])[1]
        if ia is not None and ib is not None and not (ia[0] <= a <= ia[1] and ib[0] <= b <= ib[1]):
            ia = ib = None  # a companion that does not hold the value is not its interval
    if ia is not None and ib is not None:
        if "Diff" in name and side_of_zero(ia) != side_of_zero(ib):
            return "VERDICT"  # a difference the thesis words by the side of 0 its interval lies on (\Finding…)
        return "agrees" if agree_within_intervals(a, ia, b, ib) else "DIFFERS"
    if ia is not None or ib is not None:
        return "DIFFERS"  # an interval printed in one run only
    return "close" if abs(b - a) <= REL_TOL * max(abs(a), abs(b)) else "DIFFERS"


FAILING = ("DIFFERS", "VERDICT", "MISSING", "EXTRA")


def side_of_zero(interval: tuple[float, float] | None) -> str | None:
    """Where a difference's interval lies: ``"above"`` or ``"below"`` 0, ``"contains"`` it, None without one."""
    if interval is None:
        return None
    return "above" if interval[0] > 0 else "below" if interval[1] < 0 else "contains"


def format_table(rows: list[tuple[str, str, str, str]], only_failing: bool = False) -> str:
    """A plain-text table of ``rows`` (all of them, or all but the identical ones)."""
    shown = [r for r in rows if not only_failing or r[3] != "same"]
    header = ("number", "committed", "produced", "status")
    widths = [max(len(header[i]), *(len(r[i]) for r in shown)) if shown else len(header[i]) for i in range(4)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in shown]
    return "\n".join(out)


def report(committed_text: str, produced_text: str, out=None, exact: bool = False) -> int:
    """Print the comparison (to ``out``, default stdout); 0 when every compared number agrees (statistically,
    or exactly with ``exact``), else 1."""
    out = out or sys.stdout
    rows = compare(parse_numbers(committed_text), parse_numbers(produced_text), exact=exact)
    count = {s: sum(r[3] == s for r in rows) for s in ("same", "agrees", "close", "timing", *FAILING)}
    failing = sum(count[s] for s in FAILING)
    compared = len(rows) - count["timing"]
    print(format_table(rows, only_failing=True), file=out)
    exact_line = (f"exact: {count['same']} of {compared} compared numbers identical; {count['timing']} "
                  "timing/machine number(s) not compared")
    if failing:
        print(f"\nREPRODUCTION FAILED: {failing} number(s) differ, are missing or are extra "
              f"({'exact' if exact else 'statistical'} comparison)\n{exact_line}", file=out)
        return 1
    if exact:
        print(f"\nreproduced: all {count['same']} numbers match exactly; {count['timing']} timing/machine "
              "number(s) (above) are not compared", file=out)
        return 0
    print(f"\nreproduced statistically: {count['agrees']} number(s) differ within their combined 95 % interval, "
          f"{count['close']} within {REL_TOL:.0%} (no interval), {count['same']} identical (every verdict and "
          f"label among them)\n{exact_line}", file=out)
    return 0


ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
"""``--isa``: the instruction set the CPU kernels may use (PyTorch's vectorised and compiled kernels, oneDNN's
convolutions, MKL's matrix products). Kernels of another width sum in another order, as another CPU family's would:
on an AVX-512 machine, ``avx2`` computes as an AVX2-only CPU (many AMD EPYC) does. A width the CPU lacks is not
gained, only capped."""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, **kwargs)


def regenerate(root: Path, profile: str, venv: Path, work: Path, threads: int | None = None,
               seed: int | None = None, train_seed: int | None = None,
               use_weights: bool = False, isa: str | None = None) -> tuple[str, str, str]:
    """Clone ``root``'s HEAD into ``work/repo``, run ``make figures`` there with an empty cache under
    ``work`` (``threads``: torch threads of every notebook; ``seed``: their sampling and evaluation seed, with
    the committed trained models; ``train_seed``: the models' training seed); returns (commit, committed
    numbers.tex, produced numbers.tex). ``RuntimeError`` on failure."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    clone = work / "repo"
    if clone.exists():  # a check resumed in a kept folder goes on with the commit it began with, whose cache it reuses
        theirs = _run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
        if theirs.returncode != 0 or not theirs.stdout.strip():
            raise RuntimeError(f"{clone} is not a clone with a commit; remove {work} or give another --work folder")
        began = theirs.stdout.strip()
        note = ""
        if began != head:
            same = _run(["git", "diff", "--quiet", began, head, "--", f"figures/{profile}/numbers.tex"], cwd=root)
            note = (f"; HEAD has moved on to {head[:10]}, whose figures/{profile}/numbers.tex "
                    + ("is the same" if same.returncode == 0 else "DIFFERS: the check speaks for the older commit only")
                    + f" (remove {work} to check HEAD itself)")
            head = began
        print(f"resuming the check of commit {head[:10]} in {work} (its cache is reused){note}", file=sys.stderr)
    else:
        _run(["git", "clone", "--quiet", "--no-hardlinks", str(root), str(clone)], check=True)
        _run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True)
    numbers = clone / "figures" / profile / "numbers.tex"
    shown = _run(["git", "-C", str(clone), "show", f"{head}:figures/{profile}/numbers.tex"],
                 capture_output=True, text=True)  # the committed file, even where a resumed run rewrote it
    if shown.returncode != 0:
        raise RuntimeError(f"commit {head} has no figures/{profile}/numbers.tex to compare with")
    committed = shown.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # a fresh make
    # DDPM_RETRAIN: committed weights (weights/<profile>/) would skip the training being reproduced
    env.update(DDPM_CACHE_DIR=str(work / "cache"), DDPM_CACHE=str(work / "cache-data"), PYTHONPATH=str(clone))
    if (seed is None or train_seed is not None) and not use_weights:  # another sampling seed keeps the models
        env["DDPM_RETRAIN"] = "1"
    for name, value in (("DDPM_THREADS", threads), ("DDPM_SEED", seed), ("DDPM_TRAIN_SEED", train_seed)):
        if value is not None:
            env[name] = str(value)
    env.update(ISA_ENV.get(isa, {}))
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
    ap.add_argument("--work", type=Path, default=None,
                    help="folder of the clone and its cache instead of a temporary one, kept afterwards; a check "
                         "interrupted there resumes from its cache, at the commit it began with, when run again with "
                         "the same folder (a long profile's check can span sittings)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("COMMITTED", "PRODUCED"),
                    help="only compare two numbers.tex files")
    ap.add_argument("--exact", action="store_true", help="require identical strings (same CPU model and threads)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the regeneration (the same bits on the CPUs measured here; --isa avx2 "
                         "rehearses another CPU)")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default=None,
                    help="cap the instruction set of the CPU kernels (another summation order, as on another CPU "
                         "family: avx2 on an AVX-512 machine computes as an AVX2-only CPU does)")
    ap.add_argument("--seed", type=int, default=None,
                    help="another seed of every sampling and evaluation draw, with the committed trained models")
    ap.add_argument("--train-seed", type=int, default=None, help="retrain the models with this train.seed too")
    ap.add_argument("--use-weights", action="store_true",
                    help="take the models from the committed weights/<profile>/ instead of retraining them: the "
                         "profile's own (then the check covers the sampling and evaluation, from an empty sample "
                         "cache), or with --train-seed N those of that seed (trained by tools/train_profile.py "
                         "--train-seed N, possibly over several sessions)")
    ap.add_argument("--record", action="store_true",
                    help="with --train-seed N: keep the numbers and the table in figures/<profile>/seeds/")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.record and args.train_seed is None:
        ap.error("--record keeps a regeneration with another training seed: give --train-seed N")

    if args.compare:
        for path in args.compare:
            if not path.is_file():
                ap.error(f"--compare: no file {path}")
        return report(*(p.read_text(encoding="utf-8") for p in args.compare), exact=args.exact)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be a positive integer, got {args.threads}")
    for flag, value in (("--seed", args.seed), ("--train-seed", args.train_seed)):
        if value is not None and value < 0:
            ap.error(f"{flag} must be a non-negative integer, got {value}")
    venv = args.venv if args.venv.is_absolute() else (Path.cwd() / args.venv)
    if not (venv / ".setup-stamp").is_file() or not (venv / "bin" / "python").is_file():
        ap.error(f"--venv: {venv} is not a set-up virtual environment (run make setup)")
    if args.work is not None:
        work = args.work.resolve()
        if work.exists() and not work.is_dir():
            ap.error(f"--work: {work} exists and is not a folder")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ddpm-reproduce-"))
    try:
        head, committed, produced = regenerate(args.root.resolve(), args.profile, venv, work, args.threads,
                                               args.seed, args.train_seed, args.use_weights, args.isa)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        print(f"reproduce-check: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.keep or args.work is not None:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    how = [f"{args.threads} torch thread(s)"] if args.threads else []
    how += [f"CPU kernels capped at {args.isa.upper()}"] if args.isa else []
    how += [f"sampling seed {args.seed}"] if args.seed is not None else []
    how += [f"training seed {args.train_seed}" + (" (committed models of that seed)" if args.use_weights else "")] \
        if args.train_seed is not None else ["the committed models"] if args.use_weights else []
    title = (f"figures/{args.profile}/numbers.tex of commit {head[:10]} against a regeneration from an empty cache"
             + (f" with {', '.join(how)}" if how else "") + ":")
    print(title)
    status = report(committed, produced, exact=args.exact)
    if args.record:
        record(args.root.resolve() / "figures" / args.profile / "seeds", args.train_seed, title, committed, produced,
               args.exact)
    return status


def record(folder: Path, train_seed: int, title: str, committed: str, produced: str, exact: bool) -> None:
    """Write ``train-seed-<N>.tex`` (the produced numbers) and ``train-seed-<N>.txt`` (the full comparison), and
    remove a ``train-seed-<N>.withdrawn.json`` (numbers of the previous record found to be measured wrongly, see
    ``tools/build_thesis.py``): they have just been measured anew."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    withdrawn = folder / f"train-seed-{train_seed}.withdrawn.json"
    if withdrawn.exists():
        withdrawn.unlink()
        print(f"removed {withdrawn.name}: the numbers it withdrew are in the new record", file=sys.stderr)
    (folder / f"train-seed-{train_seed}.tex").write_text(produced, encoding="utf-8")
    buf = io.StringIO()
    rows = compare(parse_numbers(committed), parse_numbers(produced), exact=exact)
    print(title, file=buf)
    print(format_table(rows), file=buf)
    report(committed, produced, out=buf, exact=exact)
    (folder / f"train-seed-{train_seed}.txt").write_text(buf.getvalue(), encoding="utf-8")
    print(f"recorded in {folder}/train-seed-{train_seed}.tex and .txt", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
