"""The notebooks in a real JupyterLab, driven by headless Chromium (``make test-lab``; skipped otherwise).

Run with ``DDPM_LAB_TESTS=1``. Needs Debian's ``chromium`` (``/usr/bin/chromium``; no browser download) and
the Playwright Python client (requirements-dev.txt). JupyterLab serves a temporary copy of the repository's
layout (``jupytext.toml`` + ``notebooks/*.py``, as ``make lab`` serves the repository root), with a token on
a free port, so nothing the browser does can touch the tracked files. For every notebook it checks that a
double-click in the file browser opens it as a notebook (rendered markdown, Jupytext's viewer), on the
project's ``ddpm-thesis`` kernel, not marked modified, and that saving writes back the same ``.py``. Then
it runs notebook 01 with the smoke profile's parameters and checks the figures appear inline. Screenshots
go to ``build/lab-test/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "build" / "lab-test"
KERNEL = "ddpm-thesis"
RUN_NOTEBOOK = "01_forward_process"

pytestmark = pytest.mark.skipif(os.environ.get("DDPM_LAB_TESTS") != "1",
                                reason="browser test: run `make test-lab` (DDPM_LAB_TESTS=1)")

NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _step(msg: str) -> None:
    """Progress on the terminal (``pytest -s``), so that a slow step is visible."""
    print(f"[lab-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port with a token, serving a copy of the repository's notebook layout."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    base = tmp_path_factory.mktemp("lab")
    root, settings, workspaces = base / "root", base / "settings", base / "workspaces"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "jupytext.toml", root / "jupytext.toml")
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / f"{name}.py", root / "notebooks" / f"{name}.py")
    # user settings of this run only: no autosave (the test saves explicitly), no news/update pop-ups
    for plugin, values in {"@jupyterlab/docmanager-extension/plugin": {"autosave": False}}.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    log = open(base / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _step(f"JupyterLab starting on port {port} (root {root})")
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(base / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        _step("JupyterLab answers")
        yield {"url": url, "token": token, "root": root, "log": base / "jupyterlab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        _step("Chromium started")
        pg.goto(f"{lab['url']}/lab/tree/notebooks?token={lab['token']}")
        pg.wait_for_selector(".jp-DirListing-item", timeout=120_000)
        _step("JupyterLab loaded in the browser")
        try:
            yield pg
        finally:
            browser.close()


def _open_by_double_click(page, name: str):
    """Double-click ``notebooks/<name>.py`` in the file browser; returns the opened document widget."""
    page.evaluate("() => jupyterapp.commands.execute('filebrowser:go-to-path', {path: 'notebooks/'})")
    item = page.locator(f'li.jp-DirListing-item[title^="Name: {name}.py"]')
    try:
        item.dblclick()
    except Exception:
        page.screenshot(path=str(SHOTS / f"{name}-not-found.png"))
        raise
    _step(f"double-clicked {name}.py")
    panel = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-Notebook")
    panel.wait_for(state="visible")
    return panel


def _command(page, command: str) -> None:
    """Start a JupyterLab command without waiting for it (a command waiting on a dialog would block)."""
    page.evaluate("(c) => { jupyterapp.commands.execute(c); }", command)


def _current(page, expr: str):
    return page.evaluate(f"() => {{ const w = jupyterapp.shell.currentWidget; return {expr}; }}")


def _wait_kernel_idle(page, timeout_s: float = 120):
    page.wait_for_function(
        "() => { const w = jupyterapp.shell.currentWidget; const k = w && w.sessionContext && "
        "w.sessionContext.session && w.sessionContext.session.kernel; return k && k.status === 'idle'; }",
        timeout=timeout_s * 1000)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_as_notebook_on_project_kernel(page, lab, name):
    _open_by_double_click(page, name)
    assert _current(page, "w.context.path") == f"notebooks/{name}.py"
    assert _current(page, "w.hasClass('jp-NotebookPanel')"), f"{name}.py opened, but not as a notebook"
    title = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-MarkdownOutput h1").first
    title.wait_for(state="visible")
    _step(f"{name}: a notebook, markdown rendered; waiting for the kernel")
    assert title.inner_text().startswith(name[:2])
    _wait_kernel_idle(page)
    assert _current(page, "w.sessionContext.session.kernel.name") == KERNEL
    _step(f"{name}: kernel {KERNEL} idle")
    assert page.locator(".jp-Dialog").count() == 0, "a dialog (kernel choice?) popped up on opening"
    time.sleep(2)  # metadata updates after the kernel connects would mark the document now
    assert not _current(page, "w.context.model.dirty"), f"{name} is marked modified right after opening"
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    # saving writes back the very same .py (no header churn, nothing reformatted)
    original = (lab["root"] / "notebooks" / f"{name}.py").read_bytes()
    _command(page, "docmanager:save")
    page.wait_for_timeout(1500)
    if page.locator(".jp-Dialog").count():
        page.screenshot(path=str(SHOTS / f"{name}-save-dialog.png"))
        pytest.fail(f"saving {name} asked: {page.locator('.jp-Dialog').inner_text()[:300]}")
    page.wait_for_function("() => !jupyterapp.shell.currentWidget.context.model.dirty")
    assert (lab["root"] / "notebooks" / f"{name}.py").read_bytes() == original, f"saving {name} changed its .py"
    if name != RUN_NOTEBOOK:
        _command(page, "notebook:close-and-shutdown")
        page.locator(".jp-Dialog .jp-mod-accept").click()  # "shut down the kernel?"
        page.locator(".jp-Dialog").wait_for(state="detached")


def _smoke_assignments(name: str) -> str:
    import yaml

    prof = yaml.safe_load((ROOT / "configs" / "profiles" / "smoke.yaml").read_text())
    values = {**prof["common"], **(prof["notebooks"].get(name) or {}), "profile": "smoke"}
    return "\n".join(f"{k} = {v!r}" for k, v in values.items() if not isinstance(v, dict))


def test_notebook_01_runs_with_inline_figures(page, lab):
    _open_by_double_click(page, RUN_NOTEBOOK)
    _wait_kernel_idle(page)
    # the smoke profile's values, set as papermill would (after the parameters cell's defaults)
    src = "\n# smoke profile (set by tests/test_lab.py)\n" + _smoke_assignments(RUN_NOTEBOOK)
    page.evaluate("""(extra) => {
        const cells = jupyterapp.shell.currentWidget.content.model.sharedModel.cells;
        const cell = cells.find(c => (c.getMetadata('tags') || []).includes('parameters'));
        cell.setSource(cell.getSource() + extra);
    }""", src)
    _command(page, "notebook:run-all-cells")
    page.wait_for_function(
        "() => { const w = jupyterapp.shell.currentWidget; const cells = w.content.model.sharedModel.cells;"
        " return cells.filter(c => c.cell_type === 'code').every(c => c.execution_count !== null) &&"
        " w.sessionContext.session.kernel.status === 'idle'; }", timeout=600_000)
    errors = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden) "
                          ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    stderr_text = "\n".join(errors.all_inner_texts())
    assert "Traceback" not in stderr_text and "Error" not in stderr_text.split("Warning")[0], stderr_text
    assert "IProgress not found" not in stderr_text, "tqdm could not use ipywidgets"
    traceback = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-OutputArea-output .ansi-red-fg")
    assert traceback.count() == 0, "a cell raised"
    images = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-OutputArea-output img")
    images.first.wait_for(state="visible")
    n_shown = images.count()
    assert n_shown >= 2, f"expected the inline figures of {RUN_NOTEBOOK}, found {n_shown} images"
    assert page.evaluate("(els) => els.every(i => i.naturalWidth > 100)", images.element_handles())
    images.first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{RUN_NOTEBOOK}-run.png"))
    images.nth(1).scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{RUN_NOTEBOOK}-run-2.png"))
    print(f"{RUN_NOTEBOOK}: {n_shown} inline images; screenshots in {SHOTS}")
