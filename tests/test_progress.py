"""diffusion.progress: plain-text bars when DDPM_PROGRESS=text (make figures), tqdm.auto otherwise."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("mode, expected", [("text", "tqdm.std"), ("auto", "tqdm.auto"), (None, "tqdm.auto")])
def test_progress_bar_kind_follows_environment(mode, expected):
    env = {k: v for k, v in os.environ.items() if k != "DDPM_PROGRESS"}
    if mode is not None:
        env["DDPM_PROGRESS"] = mode
    out = subprocess.run([sys.executable, "-c", "from diffusion.progress import tqdm; print(tqdm.__module__)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    # tqdm.auto re-exports the class of tqdm.autonotebook / tqdm.asyncio; only the text mode names tqdm.std
    assert (out == "tqdm.std") == (expected == "tqdm.std"), out


def test_make_figures_selects_text_progress():
    src = (os.path.join(os.path.dirname(__file__), "..", "tools", "make_figures.py"))
    assert 'os.environ["DDPM_PROGRESS"] = "text"' in open(src, encoding="utf-8").read()


def test_every_bar_of_the_package_comes_from_diffusion_progress():
    """A module importing tqdm itself would draw a widget under make figures, never rendered, never streamed."""
    import pathlib
    import re

    pkg = pathlib.Path(__file__).resolve().parents[1] / "diffusion"
    own = [p.relative_to(pkg.parent).as_posix() for p in pkg.rglob("*.py") if p.name != "progress.py"
           and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(encoding="utf-8"), re.MULTILINE)]
    assert own == []
