"""The notebooks as JupyterLab and papermill see them, without a browser (the browser test is test_lab.py):
the lab's default viewer and server settings, the Jupytext round trip, the parameters cells against the quick
profile, the generated header lines, inline figures in a kernel and in the smoke run's executed notebooks."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
LAB = ROOT / "tools" / "jupyterlab"


def _parameters(path: Path) -> tuple[dict, list[str]]:
    """The parameters cell of a notebook: ``{name: literal value}`` and its source lines."""
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    src = cells[0].source
    values = {}
    for node in ast.parse(src).body:
        assert isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name), \
            f"{path.name}: the parameters cell must hold plain assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values, src.splitlines()


def test_lab_opens_py_with_jupytext_notebook_viewer():
    settings = json.loads((LAB / "overrides.json").read_text())
    viewer = settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"]
    assert viewer == "Jupytext Notebook"
    # that name is the widget factory the installed Jupytext lab extension registers
    ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-jupytext" / "static"
    if not ext.is_dir():
        pytest.skip("jupytext's lab extension is not installed in this environment")
    assert any(f'"{viewer}"' in js.read_text(errors="ignore") for js in ext.glob("*.js"))


def test_make_setup_installed_the_lab_settings():
    """`make setup` copies tools/jupyterlab/* into the virtual environment (skipped outside one)."""
    installed = {Path(sys.prefix) / "share/jupyter/lab/settings/overrides.json": LAB / "overrides.json",
                 Path(sys.prefix) / "etc/jupyter/jupyter_server_config.py": LAB / "jupyter_server_config.py"}
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in the project's virtual environment")
    for dest, src in installed.items():
        assert dest.is_file(), f"{dest} missing: run `make setup`"
        assert dest.read_text() == src.read_text(), f"{dest} differs from {src}: run `make setup`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_header_names_project_kernel(path):
    meta = jupytext.read(path).metadata
    assert meta["kernelspec"]["name"] == "ddpm-thesis"
    assert meta["kernelspec"]["language"] == "python"


def test_lab_save_round_trips_every_notebook(tmp_path):
    """Open and save each notebook through the contents manager the lab runs (Jupytext's, with
    tools/jupyterlab/jupyter_server_config.py and jupytext.toml): the .py comes back byte for byte, and the
    opened notebook already carries the language_info the kernel reports (so opening does not mark it
    modified)."""
    from ipykernel.ipkernel import IPythonKernel

    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    for path in NOTEBOOKS:
        shutil.copy(path, tmp_path / "notebooks" / path.name)
    namespace = {"get_config": lambda: _Config()}
    exec(compile((LAB / "jupyter_server_config.py").read_text(), "jupyter_server_config.py", "exec"), namespace)
    manager = namespace["ProjectContentsManager"](root_dir=str(tmp_path))

    async def round_trip(name):
        model = await manager.get(f"notebooks/{name}")
        assert model["type"] == "notebook"
        assert model["content"].metadata["language_info"] == IPythonKernel.language_info
        model["content"].metadata["language_info"] = dict(IPythonKernel.language_info)  # what the lab sends
        await manager.save({"type": "notebook", "format": "json", "content": model["content"]},
                           f"notebooks/{name}")

    for path in NOTEBOOKS:
        asyncio.run(round_trip(path.name))
        assert (tmp_path / "notebooks" / path.name).read_bytes() == path.read_bytes(), \
            f"saving {path.name} from the lab would rewrite it"
        assert (tmp_path / "notebooks" / f"{path.stem}.ipynb").is_file(), "jupytext.toml pairs with .ipynb"


class _Config:
    """Stand-in for traitlets' config object when the server config file is executed by the test."""

    def __getattr__(self, name):
        value = type(self)()
        object.__setattr__(self, name, value)
        return value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_default_to_quick_profile(path):
    """Opened in the lab, a notebook computes what `make figures` computes with the quick profile."""
    from diffusion import experiments

    quick = yaml.safe_load((ROOT / "configs" / "profiles" / "quick.yaml").read_text())
    own = quick["notebooks"].get(path.stem) or {}
    expected = {**quick["common"], **own, "profile": "quick"}
    values, lines = _parameters(path)
    missing = sorted(set(own) - set(values))
    assert not missing, f"{path.name}: quick.yaml sets {missing}, which its parameters cell does not declare"
    for name, value in values.items():
        if name in ("cond", "uncond") and value is None:  # None: the profile's spec, resolved in the notebook
            value = experiments.model_spec("quick", name)
        if name in expected:
            assert value == expected[name], f"{path.name}: {name} = {value!r}, quick.yaml has {expected[name]!r}"
    for name in values:  # one comment per parameter: on its line, or a comment line just above it
        i = next(k for k, ln in enumerate(lines) if ln.startswith(f"{name} = "))
        assert "  # " in lines[i] or (i and lines[i - 1].startswith("# ")), f"{path.name}: {name} has no comment"


def test_notebook_headers_are_current():
    """The lines under each title (what it produces, how long it runs, what it reuses) are generated by
    tools/notebook_headers.py from the thesis and figures/quick/provenance.json; rerun it after either changes.
    Wall times and machines are compared for form only: `make all` regenerates figures/quick on whatever
    machine runs it, and the notebooks stay current."""
    notebook_headers = _notebook_headers()
    for path, text in notebook_headers.expected(ROOT).items():
        current = path.read_text(encoding="utf-8")
        assert notebook_headers.comparable(current) == notebook_headers.comparable(text), \
            f"{path.name}: header out of date; run python tools/notebook_headers.py"
        assert notebook_headers.MARK in text
        assert re.search(r"\*\*Runs:\*\* (?:under 10 s|about \d+ (?:s|min)) with profile quick on \S", current), \
            f"{path.name}: no measured wall time in its header"


def test_notebook_header_check_masks_only_measurements():
    """Another machine's wall time and name keep a header current; another float or cached step does not."""
    notebook_headers = _notebook_headers()
    path, text = next(iter(notebook_headers.expected(ROOT).items()))
    runs = re.search(r"\*\*Runs:\*\* (.+?) with profile quick on (.+?);", text)
    other_machine = text.replace(runs.group(0), "**Runs:** about 42 min with profile quick on Some Other CPU With\n# "
                                 "A Long Name (2 cores);")
    assert notebook_headers.comparable(other_machine) == notebook_headers.comparable(text)
    for changed in (text.replace("**Produces:**", "**Produces:** nothing;"), text.replace("**Cache:**", "**Cache:** no;"),
                    text.replace("with profile quick", "with profile long", 1)):
        assert notebook_headers.comparable(changed) != notebook_headers.comparable(text)


def _notebook_headers():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import notebook_headers
    finally:
        sys.path.pop(0)
    return notebook_headers


def test_notebooks_refer_to_thesis_floats_by_label():
    labels = set()
    for tex in (ROOT / "thesis" / "chapters").glob("*.tex"):
        labels |= set(re.findall(r"\\label\{((?:fig|tab):[^}]+)\}", tex.read_text(encoding="utf-8")))
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        numbered = re.findall(r"\b(?:figure|fig\.|table)\s*\d+[a-z]?\b", text, flags=re.I)
        assert not numbered, f"{path.name} cites floats by number {numbered}; use their labels"
        unknown = set(re.findall(r"`((?:fig|tab):[A-Za-z0-9_-]+)`", text)) - labels
        assert not unknown, f"{path.name} names labels the thesis does not have: {sorted(unknown)}"


def test_save_figure_shows_the_figure_in_a_kernel(tmp_path):
    """In a Jupyter kernel (as under papermill, with the Agg backend) save_figure puts the PNG in the cell's
    outputs, still writes both files, and returns nothing that would echo as a list of paths."""
    import nbformat
    from nbclient import NotebookClient

    code = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from diffusion import report\n"
        f"art = report.Artefacts('quick', 'nb_test', {str(tmp_path)!r})\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\n"
        "art.save_figure(fig, 'line')"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert "image/png" in outputs[0].data
    assert (tmp_path / "line.png").is_file() and (tmp_path / "line.pdf").is_file()


def _smoke_runs():
    build = ROOT / "build" / "notebooks" / "smoke"
    prov = ROOT / "figures" / "smoke" / "provenance.json"
    if not build.is_dir() or not prov.is_file():
        return []
    figures: dict[str, int] = {}
    for e in json.loads(prov.read_text())["artefacts"]:
        if e["kind"] == "figure":
            figures[e["notebook"]] = figures.get(e["notebook"], 0) + 1
    return [(build / f"{p.stem}.ipynb", figures.get(p.stem, 0)) for p in NOTEBOOKS]


@pytest.mark.parametrize("executed,n_figures", _smoke_runs() or [pytest.param(None, 0, marks=pytest.mark.skip(
    reason="no smoke run: `make test` (tools/make_figures.py --profile smoke) writes build/notebooks/smoke"))],
    ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_executed_smoke_notebooks_show_their_figures(executed, n_figures):
    """The smoke run of `make test` (papermill) leaves executed notebooks and HTML renders with the figures
    inline: as many PNG outputs as figures the notebook wrote."""
    import nbformat

    source = ROOT / "notebooks" / f"{executed.stem}.py"
    if not executed.is_file():
        pytest.skip(f"{executed.name} was not produced by the last smoke run")
    stale = [p for p in (source, ROOT / "diffusion" / "report" / "artefacts.py")
             if p.stat().st_mtime > executed.stat().st_mtime]
    if stale:
        pytest.skip(f"{executed.name} is older than {stale[0].name}; rerun `make test`")
    nb = nbformat.read(executed, as_version=4)
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert pngs >= n_figures, f"{executed.name}: {pngs} inline images for {n_figures} saved figures"
    html = executed.with_suffix(".html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= n_figures
