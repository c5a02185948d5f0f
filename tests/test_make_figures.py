"""Tests of tools/make_figures.py: publishing per notebook, merged outputs, failure reporting, GPU guard."""

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_figures", ROOT / "tools" / "make_figures.py")
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)

from diffusion import report  # noqa: E402


def _stage(tmp_path, notebook, figure, number, value):
    """A staging folder as a notebook run would leave it (written with the real Artefacts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stage = tmp_path / "stage" / notebook
    art = report.Artefacts("quick", notebook, stage, dataset="MNIST-5k", seed=0)
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    art.save_figure(fig, figure)
    art.save_table(figure + "_tab", report.booktabs_tabular(["a"], [[value]], align="r"))
    art.number(number, value)
    return stage


def test_publish_replaces_only_that_notebook(tmp_path):
    figs = tmp_path / "figures"
    order = ["01_a", "02_b"]
    mf.publish("01_a", _stage(tmp_path, "01_a", "fig_a", "NumA", 1), figs, "quick", order)
    mf.publish("02_b", _stage(tmp_path, "02_b", "fig_b", "NumB", 2), figs, "quick", order)
    out = figs / "quick"
    assert {p.name for p in out.glob("*.pdf")} == {"fig_a.pdf", "fig_b.pdf"}
    # rerun of 01_a writes a differently named figure: the old one disappears, 02_b's stay
    mf.publish("01_a", _stage(tmp_path, "01_a", "fig_a2", "NumA", 3), figs, "quick", order)
    assert {p.name for p in out.glob("*.pdf")} == {"fig_a2.pdf", "fig_b.pdf"}
    assert not (out / "tables" / "fig_a_tab.tex").exists() and (out / "tables" / "fig_b_tab.tex").exists()
    numbers = (out / "numbers.tex").read_text()
    assert r"\newcommand{\NumA}{3}" in numbers and r"\newcommand{\NumB}{2}" in numbers
    assert numbers.count(r"\newcommand{\NumA}") == 1
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["profile"] == "quick" and set(prov["notebooks"]) == {"01_a", "02_b"}
    assert {e["artefact"] for e in prov["artefacts"]} == {"fig_a2", "fig_a2_tab", "NumA", "fig_b", "fig_b_tab",
                                                           "NumB"}
    tab = (out / "tables" / "provenance.tex").read_text()
    assert r"\toprule" in tab and "fig\\_a2" in tab and "SMOKE" not in tab
    assert not list(figs.glob(".quick.*"))  # no leftovers of the swap


def test_duplicate_number_is_an_error(tmp_path):
    figs = tmp_path / "figures"
    mf.publish("01_a", _stage(tmp_path, "01_a", "f1", "Same", 1), figs, "quick", ["01_a", "02_b"])
    with pytest.raises(ValueError, match="Same"):
        mf.publish("02_b", _stage(tmp_path, "02_b", "f2", "Same", 2), figs, "quick", ["01_a", "02_b"])
    assert (figs / "quick" / "f1.pdf").exists() and not (figs / "quick" / "f2.pdf").exists()


def _fake_repo(tmp_path):
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "configs" / "profiles").mkdir(parents=True)
    for prof in ("smoke", "gpu"):
        (root / "configs" / "profiles" / f"{prof}.yaml").write_text(
            f"profile: {prof}\ncommon: {{seed: 0}}\nnotebooks:\n  02_bad: {{fail: true}}\n")
    header = '# %% tags=["parameters"]\nprofile = "quick"\nout_dir = None\ncache_dir = None\nseed = 0\nfail = False\n'
    body = textwrap.dedent('''
        # %%
        from diffusion import report
        art = report.Artefacts(profile, NAME, out_dir, cache_root=cache_dir, seed=seed)
        art.number(NUM, 7)
        # %%
        import sys
        print("working on NAME", file=sys.stderr)
        import glob
        print("sockets beside it:", glob.glob("kernel*"), file=sys.stderr)
        x = 1
        # %%
        if fail:
            raise RuntimeError("deliberate failure")
        ''')
    (root / "notebooks" / "01_ok.py").write_text(header + body.replace("NAME", "'01_ok'").replace("NUM", "'Ok'"))
    (root / "notebooks" / "02_bad.py").write_text(header + body.replace("NAME", "'02_bad'").replace("NUM", "'Bad'"))
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "fake")
    return root


def _git(repo, *args):
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    """The environment a make_figures run changes, restored afterwards."""
    from diffusion.report.provenance import COMMIT_ENV, DIRTY_ENV

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(COMMIT_ENV, "")
    monkeypatch.setenv(DIRTY_ENV, "")
    monkeypatch.setenv("TQDM_MININTERVAL", "0.1")


@pytest.mark.timeout(240)
def test_run_stops_at_failing_cell_and_keeps_earlier(tmp_path, run_env, capfd):
    root = _fake_repo(tmp_path)
    rc = mf.main(["--profile", "smoke", "--root", str(root), "--kernel", "python3"])
    err = capfd.readouterr()  # also what the kernel process writes to the terminal itself
    assert rc == 1
    assert "02_bad" in err.err and "cell" in err.err and "deliberate failure" in err.err
    assert "01_ok" in err.out and "FAILED" in err.out  # the wall-time summary
    assert "working on '01_ok'" in err.err  # a notebook's stderr (its progress bars) reaches the terminal as it runs
    assert "TCP" not in err.err  # the kernel is reached over Unix sockets: no warning of unencrypted TCP ports
    assert "sockets beside it: []" in err.err  # ... kept in a private folder, not in notebooks/ (the kernel's cwd)
    out = root / "figures" / "smoke"
    assert r"\newcommand{\Ok}{7}" in (out / "numbers.tex").read_text()
    assert r"\Bad" not in (out / "numbers.tex").read_text()
    assert (out / "tables" / "provenance.tex").read_text().count("SMOKE TEST") >= 1
    build = root / "build" / "notebooks" / "smoke"
    assert (build / "01_ok.html").is_file() and (build / "02_bad.html").is_file()
    assert (build / "01_ok.ipynb").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["dirty"] is False and prov["notebooks"]["01_ok"]["git_commit"] == _git(root, "rev-parse", "HEAD")
    assert not mf.source_state(root)["dirty"]  # the run's outputs (figures/, build/) do not make it dirty


@pytest.mark.timeout(240)
def test_dirty_sources_refused_unless_allowed(tmp_path, run_env, capsys):
    root = _fake_repo(tmp_path)
    head = _git(root, "rev-parse", "HEAD")
    (root / "notebooks" / "01_ok.py").write_text((root / "notebooks" / "01_ok.py").read_text() + "\n# edited\n")
    (root / "helper.py").write_text("untracked = True\n")
    assert mf.main(["--profile", "smoke", "--root", str(root), "--kernel", "python3"]) == 2
    err = capsys.readouterr().err
    assert "--allow-dirty" in err and "notebooks/01_ok.py" in err and "helper.py" in err and head in err
    assert not (root / "figures").exists()

    assert mf.main(["--profile", "smoke", "--root", str(root), "--kernel", "python3", "--notebooks", "01_ok",
                    "--allow-dirty"]) == 0
    out = root / "figures" / "smoke"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["dirty"] is True and prov["notebooks"]["01_ok"]["dirty"] is True
    assert all(e["dirty"] is True and e["git_commit"] == head + "-dirty" for e in prov["artefacts"])
    assert head[:10] + "-dirty" in (out / "tables" / "provenance.tex").read_text()


def test_gpu_profile_refused_without_cuda(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = _fake_repo(tmp_path)
    assert mf.main(["--profile", "gpu", "--root", str(root)]) == 2
    assert not (root / "figures" / "gpu").exists()


def test_bad_arguments(tmp_path):
    root = _fake_repo(tmp_path)
    with pytest.raises(SystemExit):
        mf.main(["--profile", "medium", "--root", str(root)])
    with pytest.raises(SystemExit):
        mf.main(["--profile", "smoke", "--notebooks", "03_nope", "--root", str(root)])
    assert mf.notebook_names(root / "notebooks", "02_bad,01_ok") == ["01_ok", "02_bad"]


def test_real_profiles_are_complete():
    """Every profile names both models and gives every notebook's section."""
    names = mf.notebook_names(ROOT / "notebooks", None)
    assert names[:2] == ["00_toy_2d", "01_forward_process"] and len(names) == 7
    for prof in report.PROFILES:
        data = mf.load_profile(prof, ROOT / "configs" / "profiles")
        assert {"cond", "uncond", "variants", "classifier_steps"} <= set(data["common"])
        assert set(data["notebooks"]) == set(names), prof
        for which in ("cond", "uncond"):
            assert (ROOT / data["common"][which]["config"]).is_file()
    assert os.path.isfile(ROOT / "jupytext.toml")


def test_kernel_is_this_interpreter_never_another_checkouts(monkeypatch):
    """The registered ``ddpm-thesis`` kernel is used only when it runs this interpreter (unresolved path:
    every virtual environment links to the same base python); otherwise ``python3``; --kernel wins."""
    import sys
    from types import SimpleNamespace

    from jupyter_client import kernelspec

    argv = {"value": [sys.executable, "-m", "ipykernel_launcher"]}

    def fake_spec(self, name):
        if argv["value"] is None:
            raise kernelspec.NoSuchKernel(name)
        return SimpleNamespace(argv=argv["value"])

    monkeypatch.setattr(kernelspec.KernelSpecManager, "get_kernel_spec", fake_spec)
    assert mf._kernel_name(None) == "ddpm-thesis"
    argv["value"] = ["/elsewhere/checkout/.venv/bin/python", "-m", "ipykernel_launcher"]  # gone or not ours
    assert mf._kernel_name(None) == "python3"
    argv["value"] = None
    assert mf._kernel_name(None) == "python3"
    assert mf._kernel_name("mine") == "mine"


@pytest.mark.parametrize("extra, flag", [([], False), (["ALLOW_DIRTY=1"], True), (["ALLOW_DIRTY=0"], False)])
def test_make_figures_passes_allow_dirty(extra, flag):
    import subprocess

    out = subprocess.run(["make", "-n", "-C", str(ROOT), "figures", "PROFILE=quick", *extra], capture_output=True,
                         text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "tools/make_figures.py" in ln)
    assert "--profile quick" in line and ("--allow-dirty" in line) is flag
    check = subprocess.run(["make", "-n", "-C", str(ROOT), "reproduce-check"], capture_output=True, text=True,
                           check=True).stdout
    assert "tools/reproduce_check.py --venv" in check


def test_real_data_replaces_the_offline_copies():
    params = {"cond": {"config": "c.yaml", "set": {"data.name": "cifar10-jpeg", "model.ch": 32}},
              "uncond": {"config": "u.yaml", "set": {"data.name": "celeba-6k"}}, "dataset": "cifar10-jpeg"}
    out = mf.real_data_overrides(params)
    assert out == {"cond": {"config": "c.yaml", "set": {"data.name": "cifar10", "model.ch": 32}},
                   "uncond": {"config": "u.yaml", "set": {"data.name": "celeba64"}}, "dataset": "cifar10"}
    assert params["cond"]["set"]["data.name"] == "cifar10-jpeg"  # the profile's own spec is left alone
    mnist = {"cond": {"config": "m.yaml", "set": {"data.name": "mnist5k"}}, "uncond": {"config": "m.yaml"}}
    assert mf.real_data_overrides(mnist) == {}  # nothing stands in for anything
    assert "--real-data" in subprocess.run(["make", "-n", "-C", str(ROOT), "figures", "PROFILE=cpu", "REAL_DATA=1"],
                                           capture_output=True, text=True, check=True).stdout


def test_reproduction_overrides_reseed_and_rethread():
    params = {"seed": 0, "threads": 0, "cond": {"config": "c.yaml", "set": {"train.seed": 0, "model.ch": 32}},
              "uncond": {"config": "u.yaml"}, "n_samples": 8}
    assert mf.reproduction_overrides(params, {}) == {}
    out = mf.reproduction_overrides(params, {"DDPM_THREADS": "1", "DDPM_SEED": "5", "DDPM_TRAIN_SEED": "7"})
    assert out["threads"] == 1 and out["seed"] == 5
    assert out["cond"] == {"config": "c.yaml", "set": {"train.seed": 7, "model.ch": 32}}
    assert out["uncond"] == {"config": "u.yaml", "set": {"train.seed": 7}}
    assert params["cond"]["set"]["train.seed"] == 0  # the profile's own spec is left alone
