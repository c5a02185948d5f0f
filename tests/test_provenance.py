"""Provenance: the commit of the sources and whether they differ from it, ignoring the runs' own outputs."""
from __future__ import annotations

import json
import subprocess

import pytest

from diffusion import report
from diffusion.report import provenance
from diffusion.report.provenance import COMMIT_ENV, DIRTY_ENV, git_commit, run_source_state, source_state


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    for rel, text in {"diffusion/a.py": "X = 1\n", "figures/quick/numbers.tex": "% n\n", ".gitignore": "/ignored/\n",
                      "README.md": "r\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "c")
    return root


def test_clean_checkout(repo):
    state = source_state(repo)
    assert state == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False, "changed": []}
    assert git_commit(repo) == state["commit"] and len(state["commit"]) == 40


@pytest.mark.parametrize("change, path", [
    (lambda r: (r / "diffusion" / "a.py").write_text("X = 2\n"), "diffusion/a.py"),       # modified
    (lambda r: (r / "diffusion" / "new.py").write_text("Y = 1\n"), "diffusion/new.py"),    # untracked source
    (lambda r: (r / "README.md").unlink(), "README.md"),                                   # deleted
    (lambda r: _git(r, "mv", "README.md", "READ.md"), "READ.md"),                          # renamed (staged)
])
def test_source_changes_are_dirty(repo, change, path):
    change(repo)
    state = source_state(repo)
    assert state["dirty"] and state["changed"] == [path]
    assert git_commit(repo) == state["commit"] + "-dirty"


def test_run_outputs_and_ignored_files_are_not_dirty(repo):
    (repo / "figures" / "quick" / "numbers.tex").write_text("% regenerated\n")  # tracked output
    (repo / "figures" / "smoke").mkdir()
    (repo / "figures" / "smoke" / "x.pdf").write_text("x")
    for rel in ("build/notebooks/quick/01.ipynb", "cache/quick/train/k/result.json", "ignored/big.bin"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    assert source_state(repo)["dirty"] is False
    (repo / "figures" / "README.md").write_text("not an output folder\n")
    assert source_state(repo)["changed"] == ["figures/README.md"]


def test_outside_a_checkout_is_dirty_and_unknown(tmp_path):
    state = source_state(tmp_path)
    assert state["dirty"] is True and state["commit"].startswith("unknown")
    assert git_commit(tmp_path).startswith("unknown") and not git_commit(tmp_path).endswith("-dirty")


def test_run_state_from_the_environment(monkeypatch, repo):
    monkeypatch.setenv(COMMIT_ENV, "abc123")
    monkeypatch.setenv(DIRTY_ENV, "0")
    assert run_source_state(repo) == {"commit": "abc123", "dirty": False, "changed": []}
    monkeypatch.setenv(DIRTY_ENV, "1")
    assert run_source_state(repo)["dirty"] is True
    monkeypatch.delenv(COMMIT_ENV)
    assert run_source_state(repo)["commit"] == _git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("dirty", [False, True])
def test_artefacts_record_commit_and_dirty_flag(tmp_path, monkeypatch, dirty):
    monkeypatch.setenv(COMMIT_ENV, "f" * 40)
    monkeypatch.setenv(DIRTY_ENV, "1" if dirty else "0")
    art = report.Artefacts("quick", "01_x", tmp_path / "out")
    art.number("Answer", 42)
    (entry,) = json.loads((tmp_path / "out" / "provenance" / "01_x.json").read_text())
    assert entry["dirty"] is dirty
    assert entry["git_commit"] == "f" * 40 + ("-dirty" if dirty else "")
    assert provenance.commit_label({"commit": "f" * 40, "dirty": dirty}) == entry["git_commit"]
