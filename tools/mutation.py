"""Mutation testing of the maths and training modules with mutmut (``make mutation``; see docs/testing.md).

The run happens in a scratch copy (``build/mutation/`` by default), never in the working tree:

1. ``diffusion/``, ``tests/``, ``configs/`` and ``pyproject.toml`` are copied there;
2. in the copy, ``@torch.no_grad()`` decorators of the mutated modules are moved to assignments at the end of
   the module (:func:`move_no_grad`): mutmut 3 does not mutate decorated functions, and without this the
   sampling loops, the bound loop, the EMA update and the Inception features would be skipped;
3. a ``[tool.mutmut]`` section names the modules and the test files relevant to them; mutmut records which
   tests reach which function and runs, per mutant, only those;
4. ``mutmut run`` (``--max-children`` = ``--jobs``), then a per-module summary: killed, timeouts, survivors
   explained in docs/testing.md (equivalent, visible only on CUDA, or killed outside mutmut), other survivors,
   mutants no test reaches, not (yet) checked, and the score (killed + timeout + killed outside mutmut) /
   (checked − equivalent − CUDA only); every survivor not explained is printed by name.

``--check-outside`` applies each survivor listed as killed *outside mutmut* to the plain sources of the scratch
copy and runs its module's tests without mutmut: each must fail. (mutmut wraps every mutated function in a
trampoline whose frame, in mutmut's own file, shifts what a warning's ``stacklevel`` names; the tests skip
that check in a mutation run.)

``--tests-from DIR`` takes ``tests/`` from another checkout (e.g. an older commit, for a before/after
comparison of the same modules).

``--resume`` continues a stopped run in the same ``--work`` folder: the sources and tests are copied in
again (mutmut resets the mutants of every function whose source changed, and collects which functions the
new tests reach), the unchecked mutants are run, and then every survivor is checked again against the
current tests. A killed mutant stays killed: tests are only ever added.
"""
from __future__ import annotations

import argparse
import ast
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"  # its table of explained survivors

# module -> the test files that exercise it (mutmut then narrows to the tests that reach each function)
TESTS = {
    "schedules": ["test_schedules", "test_guidance_schedule_details", "test_gaussian_diffusion",
                  "test_bound_closed_form", "test_sampler_recurrences"],
    "losses": ["test_losses", "test_gaussian_diffusion", "test_bound_closed_form"],
    "gaussian_diffusion": ["test_gaussian_diffusion", "test_bound_closed_form", "test_samplers",
                           "test_sampler_recurrences", "test_metrics_nll", "test_likelihood", "test_ddpm_variant",
                           "test_diffusion_interface"],
    "respace": ["test_samplers", "test_sampler_recurrences", "test_respace"],
    "samplers": ["test_samplers", "test_sampler_recurrences", "test_weights_used", "test_sampler_plumbing"],
    "guidance": ["test_samplers", "test_sampler_recurrences", "test_guidance_schedule_details"],
    "ema": ["test_checkpoint", "test_train", "test_weights_used", "test_ema_legacy_state"],
    "train": ["test_train", "test_weights_used", "test_runs", "test_train_helpers", "test_ddp", "test_fast_path",
              "test_cli"],
    "train_step": ["test_train", "test_train_helpers", "test_fast_path", "test_ddp"],
    "train_state": ["test_train", "test_train_helpers", "test_runs", "test_crash_only", "test_ddp"],
    "stop_signals": ["test_train_helpers", "test_crash_only", "test_runs"],
    "unet": ["test_unet", "test_unet_structure", "test_ddpm_variant", "test_model_info", "test_unet_validation"],
    "metrics": sorted(p.stem for p in (ROOT / "tests").glob("test_metrics_*.py")) + [
        "test_toy_energy", "test_cache_keys", "test_weights_used"],
}
DEFAULT = ["schedules", "losses", "gaussian_diffusion", "respace", "samplers", "guidance", "ema", "train", "train_step",
           "train_state", "stop_signals", "unet", "metrics"]
# torch.compile cannot trace mutmut's trampolines (they read a contextvar): these tests are left out
# the two subprocess tests of the run lock (tests/test_runs.py, 19 s and 8 s; diffusion.runs is not mutated) would
# run for every surviving mutant of the trainer: left out as well
DESELECT = ("not compiles_once and not no_graph_breaks and not ctrl_c_during_start_up "
            "and not lock_two_real_processes")
# mutmut stops a mutant after multiplier × (its tests' recorded time + this) s of wall time (twice that in CPU
# time); it records only the tests' call phase, not their fixtures (the proxy classifier is trained in a 3 s
# fixture whose test takes 0.01 s), so its default of 1 s would call such tests' mutants timeouts
TIMEOUT_CONSTANT = 10.0
PER_TEST_TIMEOUT = 90  # seconds; the slowest test in the lists takes about 10 s alone
NO_GRAD = re.compile(r"^[ \t]*@torch\.no_grad\(\)[ \t]*\n", re.M)


def move_no_grad(source: str) -> str:
    """``source`` with every ``@torch.no_grad()`` decorator line removed and the same wrapping applied by
    assignments at the end of the module (``f = torch.no_grad()(f)``, ``C.m = torch.no_grad()(C.m)``).

    mutmut 3 skips decorated functions; wrapped afterwards, the function is mutated and still runs without
    autograd (a test may depend on that: features of a network whose weights require gradients cannot become
    NumPy arrays otherwise). mutmut mutates only inside functions, so the assignments are never mutated."""
    names = []
    for node in ast.parse(source).body:
        owner, defs = (node.name + ".", node.body) if isinstance(node, ast.ClassDef) else ("", [node])
        for d in defs:
            if isinstance(d, ast.FunctionDef) and any(ast.unparse(x) == "torch.no_grad()" for x in d.decorator_list):
                names.append(owner + d.name)
    stripped, n = NO_GRAD.subn("", source)
    if n != len(names):
        raise SystemExit(f"found {n} @torch.no_grad() lines but {len(names)} module-level functions or methods "
                         "decorated with it; move_no_grad handles only those")
    return stripped + "".join(f"\n{name} = torch.no_grad()({name})  # pragma: no mutate" for name in names) + (
        "\n" if names else "")


def module_paths(name: str) -> list[str]:
    """The files of ``name``: ``metrics`` is every module of ``diffusion/metrics/``, ``metrics.kid`` one of them."""
    if name == "metrics":
        return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "diffusion" / "metrics").glob("*.py")
                      if p.name != "__init__.py")
    return [f"diffusion/{name.replace('.', '/')}.py"]


def known(name: str) -> bool:
    """A module of the list, or one module of ``metrics/`` (``metrics.kid``), which is tested like all of them."""
    if name in TESTS:
        return True
    package, _, sub = name.partition(".")
    return package == "metrics" and sub != "__init__" and (ROOT / module_paths(name)[0]).is_file()


def prepare(work: Path, modules: list[str], tests_from: Path, resume: bool, timeout_multiplier: float) -> None:
    """Copy the sources, tests and configuration to ``work`` (a fresh folder unless ``resume``)."""
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for src, dst in ((ROOT / "diffusion", work / "diffusion"), (tests_from, work / "tests"),
                     (ROOT / "configs", work / "configs")):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    paths = [p for m in modules for p in module_paths(m)]
    for meta in (work / "mutants").glob("diffusion/**/*.py.meta") if resume else ():
        rel = str(meta.relative_to(work / "mutants"))[:-len(".meta")]
        if rel not in paths:  # a module left out this time, or deleted: mutmut would still count its mutants
            meta.unlink()
            if not (ROOT / rel).is_file():
                (work / "mutants" / rel).unlink(missing_ok=True)
    for rel in paths:
        f = work / rel
        f.write_text(move_no_grad(f.read_text()))
    tests = sorted({f"tests/{t}.py" for m in modules for t in TESTS[m.split(".")[0]]
                    if (work / "tests" / f"{t}.py").is_file()})
    # a mutant that hangs a test fails it after PER_TEST_TIMEOUT s instead of waiting for mutmut's limit (minutes
    # for the trainer's tests); pytest's settings are not part of mutmut's fingerprint, so results are kept
    text, found = re.subn(r"^timeout = \d+$", f"timeout = {PER_TEST_TIMEOUT}", (ROOT / "pyproject.toml").read_text(),
                          flags=re.M)
    if not found:
        raise SystemExit("pyproject.toml: the pytest timeout setting this tool shortens is missing")
    text += ("\n[tool.mutmut]\n"
             "source_paths = ['diffusion']\n"
             f"only_mutate = {paths!r}\n"
             "also_copy = ['configs']\n"
             "process_isolation = 'forkserver'\n"  # torch's thread pools are not fork-safe after tests ran
             f"timeout_multiplier = {timeout_multiplier}\n"
             f"timeout_constant = {TIMEOUT_CONSTANT}\n"
             f"pytest_add_cli_args_test_selection = {tests!r}\n"
             f"pytest_add_cli_args = ['-p', 'no:cacheprovider', '-q', '-x', '-k', {DESELECT!r}]\n").replace("'", '"')
    (work / "pyproject.toml").write_text(text)


def results(work: Path, mutmut: str) -> dict[str, str]:
    """Every mutant of the run in ``work`` and its status (killed, survived, timeout, no tests, not checked, …)."""
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*(diffusion\.\S+__mutmut_\d+): (.+)$", out, re.M)}


def explained_survivors(doc: Path = DOC) -> dict[str, str]:
    """Explained survivors listed in ``doc``: rows ``| `function` | numbers | kind | reason |`` where kind is
    ``equivalent`` (no behaviour changes), ``CUDA only`` (a change visible only on a CUDA device) or ``outside
    mutmut`` (a change that a test sees only without mutmut's trampolines; :func:`check_outside` checks it)."""
    listed = {}
    for m in re.finditer(r"^\| `(diffusion\.[^`]+)` \| ([\d, ]+) \| (equivalent|CUDA only|outside mutmut) \| .+\|\s*$",
                         doc.read_text(encoding="utf-8"), re.M):
        for number in re.findall(r"\d+", m.group(2)):
            listed[f"{m.group(1)}__mutmut_{number}"] = m.group(3)
    return listed


def check_outside(work: Path, mutmut: str, doc: Path = DOC) -> list[str]:
    """Apply every mutant of the run in ``work`` that ``doc`` lists as ``outside mutmut`` to the plain sources
    there (``mutmut apply``) and run its module's tests with plain pytest, one mutant at a time, restoring the
    sources after each. Returns the ones that no test failed (they must be killed or explained otherwise)."""
    status = results(work, mutmut)
    listed = [n for n, kind in explained_survivors(doc).items() if kind == "outside mutmut" and n in status]
    missed = []
    for name in sorted(listed):
        dotted = re.match(r"(diffusion\.[\w.]+?)\.x", name).group(1)  # diffusion.metrics.fid
        path, package = work / (dotted.replace(".", "/") + ".py"), dotted.split(".")[1]  # its file, its TESTS key
        original = path.read_text(encoding="utf-8")
        try:
            subprocess.run([mutmut, "apply", name], cwd=work, check=True, capture_output=True)
            tests = [f"tests/{t}.py" for t in TESTS[package]]
            env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k",
                                  DESELECT, *tests], cwd=work, env=env, capture_output=True, text=True)
        finally:
            path.write_text(original, encoding="utf-8")
        killed = run.returncode == 1
        print(f"{name}: {'killed' if killed else 'NOT killed'} outside mutmut", flush=True)
        if not killed:
            missed.append(name)
    return missed


def summarise(work: Path, mutmut: str, doc: Path = DOC) -> dict:
    """Per module: killed, timeouts, explained survivors (equivalent, CUDA only, outside mutmut), other
    survivors; the score excludes the equivalent and CUDA-only ones and counts those killed outside mutmut as
    killed: (killed + timeout + outside mutmut) / (checked − equivalent − CUDA only). Code no test reaches counts
    as surviving."""
    status = results(work, mutmut)
    explained = explained_survivors(doc)
    counts: dict = collections.defaultdict(collections.Counter)
    unexplained, stale = [], []
    for name, st in status.items():
        module = re.match(r"(diffusion\.[\w.]+?)\.x", name).group(1)
        if st in ("survived", "no tests") and name in explained:
            st = explained[name]
        elif st in ("survived", "no tests"):
            unexplained.append(name)
        elif name in explained and st in ("killed", "timeout"):
            stale.append(name)
        counts[module][st] += 1
    total = collections.Counter()
    print(f"{'module':32s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'outside':>7s} {'equivalent':>10s} "
          f"{'CUDA only':>9s} {'survived':>8s} {'no tests':>8s} {'unchecked':>9s} {'score %':>7s}")
    for mod in sorted(counts):
        total.update(counts[mod])
        _row(mod, counts[mod])
    _row("total", total)
    if unexplained:
        print(f"\n{len(unexplained)} survivors neither killed nor explained in {doc.name}:")
        print("\n".join(f"  {n}" for n in sorted(unexplained)))
    if stale:
        print(f"\nexplained in {doc.name} but killed (remove them there):")
        print("\n".join(f"  {n}" for n in sorted(stale)))
    return counts


def _row(name, c) -> None:
    n = sum(c.values())
    checked = n - c["not checked"]  # "not checked": the run was stopped before it
    # a mutant that makes the tests hang is detected too, and so is one that a test kills outside mutmut
    killed = c["killed"] + c["timeout"] + c["outside mutmut"]
    scored = checked - c["equivalent"] - c["CUDA only"]
    score = 100.0 * killed / scored if scored else float("nan")
    print(f"{name:32s} {n:7d} {c['killed']:6d} {c['timeout']:7d} {c['outside mutmut']:7d} {c['equivalent']:10d} "
          f"{c['CUDA only']:9d} {c['survived']:8d} {c['no tests']:8d} {c['not checked']:9d} {score:7.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", default=",".join(DEFAULT),
                    help=f"comma-separated modules out of {', '.join(TESTS)}, or single modules of metrics/ such as "
                         "metrics.kid (default: all of them)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel mutants (mutmut --max-children); on 2 cores 1 is fastest: mutmut's main process "
                         "keeps a core busy, and a second worker slowed every mutant about threefold")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mutation", help="scratch folder")
    ap.add_argument("--tests-from", type=Path, default=ROOT / "tests", help="the tests/ folder to run")
    ap.add_argument("--timeout-multiplier", type=float, default=4.0,
                    help=f"a mutant times out after this × (its tests' recorded time + {TIMEOUT_CONSTANT:g} s) of wall "
                         "time, or twice that of CPU time; a change rechecks every timeout (mutmut's default, 15, "
                         "makes a hang cost many minutes)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --work with the current sources and tests, then recheck its survivors")
    ap.add_argument("--summary-only", action="store_true", help="only summarise an earlier run in --work")
    ap.add_argument("--check-outside", action="store_true",
                    help="after the run (or the summary), apply each survivor listed as 'outside mutmut' to the plain "
                         "sources in --work and check that its module's tests fail without mutmut")
    args = ap.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if not known(m)]
    if unknown:
        ap.error(f"--modules: unknown {unknown}; choose from {', '.join(TESTS)} or one module of metrics/ "
                 "(metrics.kid)")
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        ap.error("mutmut is not installed (pip install -r requirements-dev.txt)")
    if args.resume and not (args.work / "mutants").is_dir():
        ap.error(f"--resume: no earlier run in {args.work}")
    if not args.summary_only:
        if args.timeout_multiplier <= 0:
            ap.error("--timeout-multiplier must be positive")
        prepare(args.work.resolve(), modules, args.tests_from.resolve(), resume=args.resume,
                timeout_multiplier=args.timeout_multiplier)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        run = [mutmut, "run", "--max-children", str(args.jobs)]
        with open(args.work / "mutmut.log", "a" if args.resume else "w") as log:  # progress, for `tail -f`
            subprocess.run(run, cwd=args.work, env=env, stdout=log, stderr=subprocess.STDOUT)
            if args.resume:  # survivors killed by (or code reached by) a test added since they were run?
                survivors = [k for k, v in results(args.work, mutmut).items() if v in ("survived", "no tests")]
                if survivors:
                    print(f"rechecking {len(survivors)} survivors", flush=True)
                    subprocess.run(run + survivors, cwd=args.work, env=env, stdout=log, stderr=subprocess.STDOUT)
    summarise(args.work.resolve(), mutmut)
    if args.check_outside and check_outside(args.work.resolve(), mutmut):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
