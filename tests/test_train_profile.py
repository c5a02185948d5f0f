"""tools/train_profile.py: a profile's models, its width/depth variants and another training seed, trained into the
cache under the keys the notebooks ask for."""

import json

import pytest
import torch

import diffusion.train
from diffusion import experiments, report
from tests.tools import ROOT, load_tool


def _main():
    return load_tool("train_profile").main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    return tmp_path / "cache"


def _no_training(monkeypatch):
    from diffusion.fingerprint import training_fingerprint

    training_fingerprint()  # measured by the real trainer before it is replaced

    def fail(*args, **kwargs):
        raise AssertionError("trained again although train_profile trained this model")

    monkeypatch.setattr(diffusion.train, "Trainer", fail)


def test_variants_are_trained_under_the_keys_notebook_06_asks_for(cache, tmp_path, monkeypatch, capsys):
    assert _main()(["--profile", "smoke", "--which", "variants"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == ["variant base", "variant narrow", "variant shallow"]
    _no_training(monkeypatch)
    params = experiments.profile_params("smoke", "06_ablations")
    art = report.Artefacts("smoke", "06_ablations", tmp_path / "out")
    for name, overrides in params["variants"].items():
        spec = experiments.variant_spec(params["cond"], overrides, params["variant_steps"], params["variant_batch"])
        tm = experiments.trained_model(art, spec, "cond", dev=torch.device("cpu"), producer="06_ablations",
                                       kind=f"variant-{name}")
        assert tm.entry.source == "cache" and tm.summary["step"] == params["variant_steps"]


def test_another_training_seed_is_keyed_apart(cache, tmp_path, capsys):
    assert _main()(["--profile", "smoke", "--which", "cond", "--train-seed", "5"]) == 0
    assert _main()(["--profile", "smoke", "--which", "cond"]) == 0
    entries = sorted((cache / "smoke" / "train-cond").iterdir())
    seeds = sorted(json.loads((e / "inputs.json").read_text())["parts"]["config"]["train"]["seed"] for e in entries)
    assert seeds == [0, 5]
    out = capsys.readouterr().out
    assert out.count("cond: computed") == 2
    with pytest.raises(SystemExit):
        _main()(["--profile", "smoke", "--which", "cond", "--train-seed", "-1"])


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_profile_params_are_what_make_figures_passes(profile):
    """experiments.profile_params(profile, notebook) is the common section updated by the notebook's own, as
    tools/make_figures.py assembles a notebook's parameters."""
    prof = load_tool("make_figures").load_profile(profile, ROOT / "configs" / "profiles")
    for notebook in ("04_training", "06_ablations"):
        assert experiments.profile_params(profile, notebook) == {**prof["common"], **(prof["notebooks"].get(notebook) or {})}
    assert experiments.profile_params(profile) == prof["common"]
    assert experiments.model_spec(profile, "cond") == prof["common"]["cond"]
