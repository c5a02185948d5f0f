"""tools/train_profile.py: a profile's models, its width/depth variants and another training seed, trained into the
cache under the keys the notebooks ask for."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import diffusion.train
from diffusion import experiments, report

ROOT = Path(__file__).resolve().parents[1]


def _main():
    spec = importlib.util.spec_from_file_location("train_profile", ROOT / "tools" / "train_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


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
    import yaml

    prof = yaml.safe_load((ROOT / "configs" / "profiles" / "smoke.yaml").read_text())
    params = {**prof["common"], **prof["notebooks"]["06_ablations"]}
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
