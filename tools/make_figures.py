"""Run the notebooks headless for one profile and publish what the thesis reads into ``figures/<profile>/``.

    python tools/make_figures.py --profile quick [--notebooks 04_training,05_guidance] [--force] [--allow-dirty]

For each notebook under ``notebooks/`` (Jupytext percent format), in order:

1. convert it to ``build/notebooks/<profile>/<name>.input.ipynb``;
2. execute it with papermill (cwd ``notebooks/``) with the profile's parameters, writing its artefacts into
   an empty staging folder; the executed notebook is ``build/notebooks/<profile>/<name>.ipynb``;
3. render the executed notebook to ``build/notebooks/<profile>/<name>.html`` with nbconvert;
4. publish: a copy of ``figures/<profile>/`` (hard links) has the notebook's previous artefacts replaced by
   the new ones and the merged files (``numbers.tex``, ``provenance.json``, ``tables/provenance.tex``)
   rebuilt, and is then swapped in by rename, so the folder never shows a mix of old and new.

A failing notebook stops the run with exit status 1, naming the notebook and the failing cell; what was
published before stays. ``gpu`` and ``full`` are refused on a machine without CUDA unless ``--force``.

Provenance: the commit of the sources is taken once, as the run begins, and every artefact records it.
A run from a tree whose sources differ from that commit (anything but the run outputs ``figures/<profile>/``,
``build/`` and ``cache/``; untracked files count unless ignored) is refused with exit status 2 unless
``--allow-dirty``; its artefacts then carry ``"dirty": true`` and the commit a ``-dirty`` suffix.
The cache is ``$DDPM_CACHE_DIR`` when set, else ``<repository>/cache``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffusion import report  # noqa: E402
from diffusion.report.provenance import (COMMIT_ENV, DIRTY_ENV, commit_label, run_source_state,  # noqa: E402
                                         source_state)

GPU_PROFILES = ("gpu", "full")


class NotebookFailed(RuntimeError):
    """A notebook raised; carries the notebook name and the failing cell."""

    def __init__(self, notebook: str, cell: str, detail: str):
        super().__init__(f"notebook {notebook} failed in {cell}: {detail}")
        self.notebook, self.cell, self.detail = notebook, cell, detail


def load_profile(profile: str, profiles_dir: Path) -> dict:
    """The profile's YAML as a dict with ``common`` and ``notebooks`` sections (see configs/profiles/)."""
    import yaml

    path = profiles_dir / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ValueError(f"--profile must be one of {known}, got {profile!r} (no {path})")
    data = yaml.safe_load(path.read_text()) or {}
    if data.get("profile") != profile:
        raise ValueError(f"{path}: its 'profile' field must be {profile!r}, got {data.get('profile')!r}")
    for section in ("common", "notebooks"):
        if not isinstance(data.get(section, {}), dict):
            raise ValueError(f"{path}: '{section}' must be a mapping")
    return data


def notebook_names(notebooks_dir: Path, only: str | None) -> list[str]:
    """All ``notebooks/NN_*.py`` in order, or the comma-separated subset ``only`` (in the same order)."""
    names = sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]_*.py"))
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(f"--notebooks: unknown {unknown}; allowed: {names}")
        names = [n for n in names if n in wanted]
    return names


def _kernel_name(requested: str | None) -> str:
    """``requested``, else the project's kernel (``make setup`` registers ``ddpm-thesis`` in the virtual
    environment) when it runs this very interpreter, else ``python3`` (jupyter_client starts it with this
    interpreter). A kernel registered by another checkout, or whose interpreter is gone, is never used."""
    if requested:
        return requested
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec("ddpm-thesis").argv
    except NoSuchKernel:
        return "python3"
    # Compared unresolved: every virtual environment's python links to the same base interpreter.
    ours = bool(argv) and os.path.isfile(argv[0]) and os.path.abspath(argv[0]) == os.path.abspath(sys.executable)
    return "ddpm-thesis" if ours else "python3"


def run_notebook(name: str, params: dict, notebooks_dir: Path, build_dir: Path, kernel: str,
                 timeout: int | None) -> Path:
    """Convert, execute and render one notebook; returns the executed .ipynb. Raises NotebookFailed."""
    import jupytext
    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    source = notebooks_dir / f"{name}.py"
    nb_in, nb_out = build_dir / f"{name}.input.ipynb", build_dir / f"{name}.ipynb"
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    jupytext.write(nb, nb_in, fmt="ipynb")
    declared = papermill.inspect_notebook(str(nb_in))  # pass only what the notebook's parameters cell names
    params = {k: v for k, v in params.items() if k in declared}
    error = None
    try:
        # the notebook's stderr (its progress bars and warnings) reaches this terminal as it runs: a cell of
        # 06_ablations works for an hour on the CPU, and a user should see where it is. The kernel talks to
        # this process over Unix sockets (ipc) in a private folder, not TCP ports anyone on the machine
        # could connect to (and not sockets in notebooks/, where they would show as untracked files).
        with tempfile.TemporaryDirectory(prefix="ddpm-kernel-") as sockets:
            config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
            papermill.execute_notebook(str(nb_in), str(nb_out), parameters=params, kernel_name=kernel,
                                       cwd=str(notebooks_dir), progress_bar=False, execution_timeout=timeout,
                                       stderr_file=sys.stderr, config=config)
    except papermill.PapermillExecutionError as exc:
        cell = f"cell {exc.cell_index} (execution count {exc.exec_count})"
        first = next((ln for ln in exc.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        error = NotebookFailed(name, cell, f"{exc.ename}: {exc.evalue}  [cell starts: {first[:80]}]")
    except Exception as exc:  # the kernel died, a cell timed out, the kernel could not start, ...
        cell = "the running cell (see the executed notebook)"
        error = NotebookFailed(name, cell, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    if nb_out.is_file():
        html, _ = HTMLExporter().from_notebook_node(nbformat.read(nb_out, as_version=4))
        (build_dir / f"{name}.html").write_text(html, encoding="utf-8")
    if error:
        raise error
    return nb_out


def _is_dirty(entry: dict) -> bool:
    return bool(entry.get("dirty", str(entry.get("git_commit", "")).endswith("-dirty")))


def _short_commit(entry: dict) -> str:
    """The first 10 hex digits of an entry's commit (``unknown`` without one), keeping its ``-dirty`` mark."""
    commit = entry["git_commit"].removesuffix("-dirty")
    short = commit[:10] if all(c in "0123456789abcdef" for c in commit) and commit else "unknown"
    return short + ("-dirty" if _is_dirty(entry) and short != "unknown" else "")


def _merge(folder: Path, profile: str, names_order: list[str]) -> None:
    """Rebuild numbers.tex, provenance.json and tables/provenance.tex of ``folder`` from its fragments."""
    fragments = sorted((folder / "numbers").glob("*.tex"), key=lambda p: p.stem)
    seen: dict[str, str] = {}
    lines = [f"% numbers of the thesis, profile {profile}; generated by tools/make_figures.py"]
    for frag in fragments:
        for line in frag.read_text(encoding="utf-8").splitlines():
            if line.startswith(r"\newcommand{"):
                cmd = line[len(r"\newcommand{"):].split("}", 1)[0]
                if cmd in seen:
                    raise ValueError(f"number {cmd} is written by both {seen[cmd]} and {frag.stem}")
                seen[cmd] = frag.stem
            lines.append(line)
    (folder / "numbers.tex").write_text("\n".join(lines) + "\n", encoding="utf-8")

    entries, notebooks = [], {}
    for frag in sorted((folder / "provenance").glob("*.json"), key=lambda p: p.stem):
        part = json.loads(frag.read_text())
        entries += part
        if part:
            notebooks[frag.stem] = {"wall_time_s": max(e["wall_time_s"] for e in part),
                                    "git_commit": part[0]["git_commit"], "dirty": any(map(_is_dirty, part)),
                                    "device": part[0]["device"]}
    for e in entries:
        e["dirty"] = _is_dirty(e)
    (folder / "provenance.json").write_text(json.dumps(
        {"profile": profile, "merged_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
         "dirty": any(e["dirty"] for e in entries), "notebooks": notebooks, "artefacts": entries},
        indent=1, ensure_ascii=False), encoding="utf-8")

    rows = [[e["artefact"], e["kind"], e["notebook"], e["dataset"] or "--", _short_commit(e),
             e["device"], f"{e['wall_time_s']:.0f}"] for e in entries if e["kind"] in ("figure", "table")]
    rows.append(["provenance", "table", "make figures", "--",
                 rows[0][4] if rows else _short_commit({"git_commit": commit_label(run_source_state())}), "--",
                 "--"])
    tab = report.booktabs_tabular(["artefact", "kind", "notebook", "dataset", "commit", "device", "time (s)"],
                                  rows, align="lllllp{4cm}r")
    if profile == "smoke":
        tab = report.mark_smoke_table(tab)
    (folder / "tables").mkdir(exist_ok=True)
    (folder / "tables" / "provenance.tex").write_text(tab, encoding="utf-8")


def publish(name: str, stage: Path, figures_dir: Path, profile: str, order: list[str]) -> None:
    """Swap ``figures/<profile>/`` for a copy in which notebook ``name``'s artefacts come from ``stage``."""
    target = figures_dir / profile
    new, old = figures_dir / f".{profile}.new", figures_dir / f".{profile}.old"
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    if target.exists():
        shutil.copytree(target, new, copy_function=os.link)
        prev = new / "provenance" / f"{name}.json"
        if prev.is_file():
            for entry in json.loads(prev.read_text()):
                for rel in entry["files"]:
                    (new / rel).unlink(missing_ok=True)
        for frag in (new / "numbers" / f"{name}.tex", prev):
            frag.unlink(missing_ok=True)
    else:
        new.mkdir(parents=True)
    for path in sorted(stage.rglob("*")):
        if path.is_file():
            dest = new / path.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    _merge(new, profile, order)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def reproduction_overrides(params: dict, env) -> dict:
    """Parameters that ``tools/reproduce_check.py`` changes through the environment: ``DDPM_THREADS`` (torch
    threads: another reduction order), ``DDPM_SEED`` (the seed of every sampling and evaluation draw) and
    ``DDPM_TRAIN_SEED`` (``train.seed`` of the trained models, and so of the width/depth variants derived
    from the conditional one)."""
    out = {}
    if env.get("DDPM_THREADS"):
        out["threads"] = int(env["DDPM_THREADS"])
    if env.get("DDPM_SEED"):
        out["seed"] = int(env["DDPM_SEED"])
    if env.get("DDPM_TRAIN_SEED"):
        for which in ("cond", "uncond"):
            spec = params.get(which)
            if isinstance(spec, dict):
                out[which] = {**spec, "set": {**(spec.get("set") or {}), "train.seed": int(env["DDPM_TRAIN_SEED"])}}
    return out


REAL_DATA = {"cifar10-jpeg": "cifar10", "celeba-6k": "celeba64"}
"""The offline copies and the datasets they stand in for (``--real-data``)."""


def real_data_overrides(params: dict) -> dict:
    """Parameters with every offline copy of :data:`REAL_DATA` replaced by the real dataset: the ``data.name`` of
    the ``cond``/``uncond`` specs and a notebook's ``dataset`` parameter (``--real-data``, ``make figures
    REAL_DATA=1``). The models are then keyed on the real data and trained on it; the committed weights, trained on
    the copies, do not apply."""
    out = {}
    for which in ("cond", "uncond"):
        spec = params.get(which)
        name = (spec.get("set") or {}).get("data.name") if isinstance(spec, dict) else None
        if name in REAL_DATA:
            out[which] = {**spec, "set": {**spec["set"], "data.name": REAL_DATA[name]}}
    if params.get("dataset") in REAL_DATA:
        out["dataset"] = REAL_DATA[params["dataset"]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", help="one of configs/profiles/*.yaml (default quick)")
    ap.add_argument("--notebooks", default=None, help="comma-separated subset, e.g. 04_training,05_guidance")
    ap.add_argument("--force", action="store_true", help="allow the gpu/full profiles without CUDA")
    ap.add_argument("--kernel", default=os.environ.get("DDPM_KERNEL"), help="Jupyter kernel (default: the "
                    "project's registered kernel if present, else python3)")
    ap.add_argument("--data-root", default=os.environ.get("DDPM_DATA_ROOT"),
                    help="folder of the offline dataset copies (default $DDPM_DATA_ROOT)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--allow-dirty", action="store_true", help="run although the sources differ from the "
                    "commit (the artefacts are then marked dirty); make figures ALLOW_DIRTY=1")
    ap.add_argument("--real-data", action="store_true", default=os.environ.get("DDPM_REAL_DATA") == "1",
                    help="the real CIFAR-10 and CelebA instead of the offline copies the profile names (torchvision "
                         "downloads CIFAR-10; CelebA from the data root); make figures REAL_DATA=1")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    root = args.root.resolve()
    notebooks_dir, figures_dir = root / "notebooks", root / "figures"
    try:
        prof = load_profile(args.profile, root / "configs" / "profiles")
        names = notebook_names(notebooks_dir, args.notebooks)
    except ValueError as exc:
        ap.error(str(exc))
    if args.profile in GPU_PROFILES and not args.force:
        import torch

        if not torch.cuda.is_available():
            print(f"refusing to write figures/{args.profile} from a machine without CUDA (its results would "
                  "pass for GPU results); use --force to override", file=sys.stderr)
            return 2

    source = source_state(root)  # the commit as the run begins: every notebook records this one
    if source["dirty"] and not args.allow_dirty:
        shown = "".join(f"\n  {p}" for p in source["changed"][:15])
        more = f"\n  ... and {len(source['changed']) - 15} more" if len(source["changed"]) > 15 else ""
        print(f"refusing to write figures/{args.profile}: the sources differ from commit {source['commit']}, so "
              f"its artefacts could not be reproduced from it. Commit first, or pass --allow-dirty "
              f"(make figures ALLOW_DIRTY=1) to mark every artefact dirty. Differences:{shown}{more}",
              file=sys.stderr)
        return 2
    os.environ[COMMIT_ENV], os.environ[DIRTY_ENV] = source["commit"], "1" if source["dirty"] else "0"
    if source["dirty"]:
        print(f"[make figures] the sources differ from {source['commit']}: artefacts are marked dirty",
              file=sys.stderr)
    cache_dir = Path(os.environ.get("DDPM_CACHE_DIR") or root / "cache").resolve()

    build_dir = root / "build" / "notebooks" / args.profile
    build_dir.mkdir(parents=True, exist_ok=True)
    kernel = _kernel_name(args.kernel)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    if args.data_root:
        os.environ["DDPM_DATA_ROOT"] = str(Path(args.data_root).resolve())
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["DDPM_PROGRESS"] = "text"  # plain-text progress bars in the executed notebooks (diffusion.progress)
    os.environ.setdefault("TQDM_MININTERVAL", "5")  # one update per 5 s: readable in a log file of a 3-hour run

    timings: list[tuple[str, float, str]] = []
    failed: NotebookFailed | None = None
    t_all = time.perf_counter()
    for name in names:
        stage = build_dir / "stage" / name
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        params = {**prof.get("common", {}), **(prof.get("notebooks", {}).get(name) or {}),
                  "profile": args.profile, "out_dir": str(stage), "cache_dir": str(cache_dir)}
        params.update(reproduction_overrides(params, os.environ))
        if args.real_data:
            params.update(real_data_overrides(params))
        print(f"[make figures] {args.profile}: running {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            run_notebook(name, params, notebooks_dir, build_dir, kernel, args.timeout)
        except NotebookFailed as exc:
            timings.append((name, time.perf_counter() - t0, "FAILED"))
            failed = exc
            shutil.rmtree(stage, ignore_errors=True)
            break
        publish(name, stage, figures_dir, args.profile, names)
        shutil.rmtree(stage, ignore_errors=True)
        timings.append((name, time.perf_counter() - t0, "ok"))
        print(f"[make figures] {name}: {timings[-1][1]:.1f} s", flush=True)

    print(f"\nwall time per notebook (profile {args.profile}, kernel {kernel}):")
    for name, secs, status in timings:
        print(f"  {name:<22} {secs:8.1f} s  {status}")
    print(f"  {'total':<22} {time.perf_counter() - t_all:8.1f} s")
    print(f"executed notebooks and HTML: {build_dir}\nartefacts: {figures_dir / args.profile}")
    if failed:
        print(f"\nERROR: {failed}\n  see {build_dir / (failed.notebook + '.html')}; "
              "artefacts of the notebooks before it were kept", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
