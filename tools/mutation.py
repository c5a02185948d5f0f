"""Mutation testing of the maths and training modules with mutmut (``make mutation``; see docs/testing.md).

The run happens in a scratch copy (``build/mutation/`` by default), never in the working tree:

1. ``diffusion/``, ``tests/``, ``configs/`` and ``pyproject.toml`` are copied there;
2. in the copy, ``@torch.no_grad()`` decorator lines are removed from the mutated modules: mutmut 3 does
   not mutate decorated functions, and without this the sampling loops, the bound loop and the EMA update
   would be skipped (the decorator only switches autograd off; no test depends on it);
3. a ``[tool.mutmut]`` section names the modules and the test files relevant to them; mutmut records which
   tests reach which function and runs, per mutant, only those;
4. ``mutmut run`` (``--max-children`` = ``--jobs``), then a per-module summary: killed, survived, timeouts,
   no tests, not (yet) checked, and the kill rate (killed + timeout) / (checked mutants that a test reaches).

``--tests-from DIR`` takes ``tests/`` from another checkout (e.g. an older commit, for a before/after
comparison of the same modules).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the test files that exercise it (mutmut then narrows to the tests that reach each function)
TESTS = {
    "schedules": ["test_schedules", "test_guidance_schedule_details", "test_gaussian_diffusion",
                  "test_bound_closed_form", "test_sampler_recurrences"],
    "losses": ["test_losses", "test_gaussian_diffusion", "test_bound_closed_form"],
    "gaussian_diffusion": ["test_gaussian_diffusion", "test_bound_closed_form", "test_samplers",
                           "test_sampler_recurrences", "test_metrics_nll"],
    "respace": ["test_samplers", "test_sampler_recurrences"],
    "samplers": ["test_samplers", "test_sampler_recurrences", "test_weights_used"],
    "guidance": ["test_samplers", "test_sampler_recurrences", "test_guidance_schedule_details"],
    "ema": ["test_checkpoint", "test_train", "test_weights_used"],
    "train": ["test_train", "test_weights_used"],
    "unet": ["test_unet", "test_unet_structure"],
    "metrics": sorted(p.stem for p in (ROOT / "tests").glob("test_metrics_*.py")),
}
DEFAULT = ["schedules", "losses", "gaussian_diffusion", "respace", "samplers", "guidance", "ema", "train", "unet",
           "metrics"]
# torch.compile cannot trace mutmut's trampolines (they read a contextvar): these tests are left out
DESELECT = "not compiles_once and not no_graph_breaks"
NO_GRAD = re.compile(r"^[ \t]*@torch\.no_grad\(\)[ \t]*\n", re.M)


def module_paths(name: str) -> list[str]:
    if name == "metrics":
        return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "diffusion" / "metrics").glob("*.py")
                      if p.name != "__init__.py")
    return [f"diffusion/{name}.py"]


def prepare(work: Path, modules: list[str], tests_from: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "diffusion", work / "diffusion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tests_from, work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", work / "configs")
    paths = [p for m in modules for p in module_paths(m)]
    for rel in paths:
        f = work / rel
        f.write_text(NO_GRAD.sub("", f.read_text()))
    tests = sorted({f"tests/{t}.py" for m in modules for t in TESTS[m] if (work / "tests" / f"{t}.py").is_file()})
    text = (ROOT / "pyproject.toml").read_text()
    text += ("\n[tool.mutmut]\n"
             "source_paths = ['diffusion']\n"
             f"only_mutate = {paths!r}\n"
             "also_copy = ['configs']\n"
             "process_isolation = 'forkserver'\n"  # torch's thread pools are not fork-safe after tests ran
             f"pytest_add_cli_args_test_selection = {tests!r}\n"
             f"pytest_add_cli_args = ['-p', 'no:cacheprovider', '-q', '-x', '-k', {DESELECT!r}]\n").replace("'", '"')
    (work / "pyproject.toml").write_text(text)


def summarise(work: Path, mutmut: str) -> dict:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    counts: dict = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        m = re.match(r"\s*(diffusion\.[\w.]+?)\.x\w*__mutmut_\d+: (.+)$", line)
        if m:
            counts[m.group(1)][m.group(2).strip()] += 1
    total = collections.Counter()
    print(f"{'module':32s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'timeout':>7s} {'no tests':>8s} "
          f"{'unchecked':>9s} {'kill %':>6s}")
    for mod in sorted(counts):
        c = counts[mod]
        total.update(c)
        _row(mod, c)
    _row("total", total)
    return counts


def _row(name, c) -> None:
    n = sum(c.values())
    tested = n - c["no tests"] - c["not checked"]  # "not checked": the run was stopped before it
    killed = c["killed"] + c["timeout"]  # a mutant that makes the tests hang is detected too
    rate = 100.0 * killed / tested if tested else float("nan")
    print(f"{name:32s} {n:7d} {c['killed']:6d} {c['survived']:8d} {c['timeout']:7d} {c['no tests']:8d} "
          f"{c['not checked']:9d} {rate:6.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", default=",".join(DEFAULT),
                    help=f"comma-separated modules out of {', '.join(TESTS)} (default: all of them)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel mutants (mutmut --max-children)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mutation", help="scratch folder")
    ap.add_argument("--tests-from", type=Path, default=ROOT / "tests", help="the tests/ folder to run")
    ap.add_argument("--summary-only", action="store_true", help="only summarise an earlier run in --work")
    args = ap.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if m not in TESTS]
    if unknown:
        ap.error(f"--modules: unknown {unknown}; choose from {', '.join(TESTS)}")
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        ap.error("mutmut is not installed (pip install -r requirements-dev.txt)")
    if not args.summary_only:
        prepare(args.work.resolve(), modules, args.tests_from.resolve())
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(args.work / "mutmut.log", "w") as log:  # mutmut's progress line, for `tail -f`
            subprocess.run([mutmut, "run", "--max-children", str(args.jobs)], cwd=args.work, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    summarise(args.work.resolve(), mutmut)
    return 0


if __name__ == "__main__":
    sys.exit(main())
