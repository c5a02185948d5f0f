"""Committed weights (tools/export_weights.py → weights/<profile>/…): a notebook asking for the same key gets
the exported model back without training, bit for bit; ``DDPM_RETRAIN=1`` and any change of key ignore it."""

import json
from pathlib import Path

import pytest
import torch

import diffusion.train
from diffusion import experiments, report
from diffusion.checkpoint import load_checkpoint
from tests.test_weights_used import flat, tiny_cfg, tiny_data
from tests.tools import load_tool

ROOT = Path(__file__).resolve().parents[1]


def _export_main():
    return load_tool("export_weights").main


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny_cfg(sample_every=[3]))
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny_data())


def test_exported_weights_replace_training_exactly(tiny, tmp_path, monkeypatch, capsys):
    cache, weights = tmp_path / "cache", tmp_path / "weights"
    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    art = report.Artefacts("smoke", "04_training", tmp_path / "out", cache_root=cache)
    spec = {"stage": {"num": 4, "steps": 2}}
    trained = experiments.trained_model(art, spec, "cond", dev=torch.device("cpu"))
    assert trained.entry.source == "computed"

    assert _export_main()(["--profile", "smoke", "--cache-dir", str(cache), "--kinds", "train-*"]) == 0
    exported = weights / "smoke" / "train-cond" / trained.entry.key
    state = load_checkpoint(exported / "run" / "checkpoints")
    assert "optimizer" not in state and {"model", "ema"} <= set(state)
    assert (exported / "run" / "metrics.jsonl").is_file() and list((exported / "run" / "samples").glob("step_*.npz"))

    # a fresh cache: the same key is served from the weights; training would fail loudly
    def no_training(*args, **kwargs):
        raise AssertionError("trained although committed weights match")

    monkeypatch.setattr(diffusion.train, "Trainer", no_training)
    art2 = report.Artefacts("smoke", "04_training", tmp_path / "out2", cache_root=tmp_path / "cache2")
    again = experiments.trained_model(art2, spec, "cond", dev=torch.device("cpu"))
    assert again.entry.source == "weights" and again.entry.key == trained.entry.key
    assert torch.equal(flat(again.model.parameters()), flat(trained.model.parameters()))
    assert torch.equal(flat(again.raw_model.parameters()), flat(trained.raw_model.parameters()))
    assert [s for s, _ in again.stage_samples()] == [s for s, _ in trained.stage_samples()] == [3]
    assert again.metrics == trained.metrics
    # the second time it is an ordinary cache hit
    assert experiments.trained_model(art2, spec, "cond", dev=torch.device("cpu")).entry.source == "cache"

    # DDPM_RETRAIN=1, or another key (a changed config), trains instead
    monkeypatch.setenv("DDPM_RETRAIN", "1")
    art3 = report.Artefacts("smoke", "04_training", tmp_path / "out3", cache_root=tmp_path / "cache3")
    with pytest.raises(AssertionError, match="trained although"):
        experiments.trained_model(art3, spec, "cond", dev=torch.device("cpu"))
    monkeypatch.delenv("DDPM_RETRAIN")
    monkeypatch.setattr(experiments, "load_run_config", lambda spec: tiny_cfg(sample_every=[3], lr=1e-3))
    with pytest.raises(AssertionError, match="trained although"):
        experiments.trained_model(art3, spec, "cond", dev=torch.device("cpu"))


def test_the_models_of_another_training_seed_are_exported_beside(tmp_path, monkeypatch):
    """One export per training seed: exporting seed 0 again replaces seed 0's folder (its unfinished export too)
    and leaves seed 7's, and both serve their own keys."""
    monkeypatch.setattr(experiments, "load_run_config",
                        lambda spec: tiny_cfg(sample_every=[3], seed=int((spec.get("set") or {}).get("train.seed", 0))))
    monkeypatch.setattr(experiments, "load_data", lambda spec, split="train", cfg=None: tiny_data())
    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    cache = tmp_path / "cache"
    art = report.Artefacts("smoke", "04_training", tmp_path / "out", cache_root=cache)
    spec = {"stage": {"num": 4, "steps": 2}}
    seed0 = experiments.trained_model(art, spec, "cond", dev=torch.device("cpu"))
    seed7 = experiments.trained_model(art, experiments.with_overrides(spec, {"train.seed": 7}), "cond",
                                      dev=torch.device("cpu"))
    assert seed0.entry.key != seed7.entry.key
    kind = tmp_path / "weights" / "smoke" / "train-cond"
    kind.mkdir(parents=True)
    stale = kind / "0123456789abcdef01234567.partial"  # an unfinished export of seed 0, now superseded
    stale.mkdir()
    (stale / "inputs.json").write_text((seed0.entry.path / "inputs.json").read_text())
    assert _export_main()(["--profile", "smoke", "--cache-dir", str(cache), "--kinds", "train-*"]) == 0
    assert sorted(p.name for p in kind.iterdir()) == sorted([seed0.entry.key, seed7.entry.key])
    assert _export_main()(["--profile", "smoke", "--cache-dir", str(cache), "--kinds", "train-*"]) == 0
    assert sorted(p.name for p in kind.iterdir()) == sorted([seed0.entry.key, seed7.entry.key])
    fresh = report.Artefacts("smoke", "04_training", tmp_path / "out2", cache_root=tmp_path / "cache2")
    again = experiments.trained_model(fresh, experiments.with_overrides(spec, {"train.seed": 7}), "cond",
                                      dev=torch.device("cpu"))
    assert again.entry.source == "weights" and again.entry.key == seed7.entry.key
    assert torch.equal(flat(again.model.parameters()), flat(seed7.model.parameters()))


def test_export_refuses_an_empty_cache(tmp_path, capsys):
    assert _export_main()(["--profile", "smoke", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "w")]) == 2
    assert "no cache for profile" in capsys.readouterr().err


def _committed_models():
    """(profile, kind, folder) of every committed trained model and width/depth variant, finished or carried over
    unfinished, of any training seed."""
    found = []
    for kind_dir in sorted([*(ROOT / "weights").glob("*/train-*"), *(ROOT / "weights").glob("*/variant-*")]):
        found += [(kind_dir.parent.name, kind_dir.name, d) for d in sorted(kind_dir.iterdir()) if d.is_dir()]
    return found


def _expected_spec(profile: str, kind: str, seed) -> tuple[dict, str, str]:
    """(spec, which, producer) the notebooks give a committed model of ``kind`` trained with ``train.seed = seed``:
    the profile's spec (04_training), or a width/depth variant of its conditional spec (06_ablations)."""
    def seeded(spec):
        return spec if seed == spec_seed(spec) else experiments.with_overrides(spec, {"train.seed": seed})

    def spec_seed(spec):
        return experiments.load_run_config(spec).train.seed

    if kind.startswith("train-"):
        which = kind.removeprefix("train-")
        return seeded(experiments.model_spec(profile, which)), which, experiments.TRAIN_PRODUCER
    params = experiments.profile_params(profile, "06_ablations")
    name = kind.removeprefix("variant-")
    return (experiments.variant_spec(seeded(experiments.model_spec(profile, "cond")), params["variants"][name],
                                     params["variant_steps"], params["variant_batch"]), "cond", "06_ablations")


@pytest.mark.parametrize("profile, kind, folder", _committed_models(),
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_committed_models_are_current(profile, kind, folder):
    """Each committed model sits under the key the current code gives its profile's spec (a width/depth variant:
    notebook 06's variant of it; another training seed: the spec with that seed): the same configuration, data,
    stage samples, torch version and training fingerprint. A change of what training computes changes the
    fingerprint; then retrain, export and regenerate the profile's figures in one commit."""
    from diffusion.data import DatasetNotFoundError
    from diffusion.fingerprint import training_fingerprint
    from diffusion.report.cache import cache_key

    recorded = json.loads((folder / "inputs.json").read_text())
    assert recorded.get("fingerprint") == training_fingerprint(), (
        f"{folder.relative_to(ROOT)} was trained by code whose training fingerprint was "
        f"{recorded.get('fingerprint')}; this code's is {training_fingerprint()}: training computes something "
        f"else now. Retrain (make figures PROFILE={profile}), export (tools/export_weights.py) and commit both")
    spec, which, producer = _expected_spec(profile, kind, recorded["parts"]["config"]["train"]["seed"])
    try:
        parts = experiments.training_key(spec, which)
    except DatasetNotFoundError:  # the offline copies are not on this machine: their recorded digest stands in
        parts = experiments.training_key(spec, which, data_digest=recorded["parts"]["data"])
    key, inputs = cache_key(parts, producer, fingerprint=training_fingerprint())
    assert inputs["parts"] == recorded["parts"], f"{folder.relative_to(ROOT)}: the profile's spec changed"
    assert key == folder.name.removesuffix(".partial"), f"{folder.relative_to(ROOT)} is stale: its key is now {key}"


def _finished(profile: str, kind: str) -> bool:
    return any(d.is_dir() and not d.name.endswith(".partial") for d in (ROOT / "weights" / profile / kind).glob("*"))


@pytest.mark.parametrize("profile", ["long", "cpu"])
def test_the_profile_trains_nothing(profile, tmp_path, monkeypatch):
    """``make figures PROFILE=long`` (and ``cpu``, the thesis's profile) on a clean clone takes every model from
    weights/<profile>/: both models of 04, and the width/depth variants of 06 where the profile commits them."""
    from diffusion.fingerprint import training_fingerprint

    variants = experiments.profile_params(profile, "06_ablations")["variants"] if profile == "cpu" else {}
    kinds = ["train-cond", "train-uncond"] + [f"variant-{name}" for name in variants]
    if profile == "cpu" and not all(_finished(profile, kind) for kind in kinds):
        pytest.skip(f"the cpu models are trained over several sessions; not yet committed finished: "
                    f"{', '.join(k for k in kinds if not _finished(profile, k))}")
    if profile == "cpu":
        from diffusion.data import DatasetNotFoundError
        try:
            experiments.load_data(experiments.model_spec(profile, "cond"))
        except DatasetNotFoundError as err:
            pytest.skip(f"the cpu profile's offline data are not on this machine: {err}")
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    monkeypatch.delenv("DDPM_WEIGHTS_DIR", raising=False)
    training_fingerprint()  # measured by the real trainer before it is replaced

    def no_training(*args, **kwargs):
        raise AssertionError("trained although committed weights apply")

    monkeypatch.setattr(diffusion.train, "Trainer", no_training)
    art = report.Artefacts(profile, "04_training", tmp_path / "out", cache_root=tmp_path / "cache")
    for which in ("cond", "uncond"):
        tm = experiments.trained_model(art, experiments.model_spec(profile, which), which, dev=torch.device("cpu"))
        assert tm.entry.source == "weights" and tm.summary["step"] == tm.cfg.train.total_steps
    if variants:
        params = experiments.profile_params(profile, "06_ablations")
        art06 = report.Artefacts(profile, "06_ablations", tmp_path / "out06", cache_root=tmp_path / "cache")
        for name, overrides in variants.items():
            spec = experiments.variant_spec(experiments.model_spec(profile, "cond"), overrides, params["variant_steps"],
                                            params["variant_batch"])
            vm = experiments.trained_model(art06, spec, "cond", producer="06_ablations", kind=f"variant-{name}",
                                           dev=torch.device("cpu"))
            assert vm.entry.source == "weights" and vm.summary["step"] == params["variant_steps"]


def test_an_unfinished_training_is_carried_over_and_resumed_exactly(tiny, tmp_path, monkeypatch):
    """export_weights --partial writes an interrupted training with its optimiser state; a fresh cache
    resumes it from there and ends where an uninterrupted training ends, bit for bit."""
    from diffusion.fingerprint import training_fingerprint
    from diffusion.report.cache import cache_key

    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("DDPM_RETRAIN", raising=False)
    spec = {"stage": {"num": 4, "steps": 2}}
    whole = experiments.trained_model(report.Artefacts("smoke", "04_training", tmp_path / "o1",
                                                       cache_root=tmp_path / "c1"), spec, "cond",
                                      dev=torch.device("cpu"))

    # the same training stopped after two of its three steps, as a session's end leaves it
    key, inputs = cache_key(experiments.training_key(spec, "cond", experiments.load_data(spec).digest),
                            experiments.TRAIN_PRODUCER, fingerprint=training_fingerprint())
    partial = tmp_path / "c2" / "smoke" / "train-cond" / f"{key}.partial"
    partial.mkdir(parents=True)
    (partial / "inputs.json").write_text(json.dumps(inputs))
    diffusion.train.train(experiments.load_run_config(spec), data=experiments.load_data(spec), out_dir=partial / "run",
                          device="cpu", progress=False, sample_num=4, sample_sampler="ddim", sample_steps=2,
                          total_steps=2)
    assert _export_main()(["--profile", "smoke", "--cache-dir", str(tmp_path / "c2"), "--kinds", "train-*",
                           "--partial"]) == 0
    carried = tmp_path / "weights" / "smoke" / "train-cond" / f"{key}.partial"
    assert "optimizer" in load_checkpoint(carried / "run" / "checkpoints")
    assert (carried / "run" / "history.jsonl").is_file()

    resumed = experiments.trained_model(report.Artefacts("smoke", "04_training", tmp_path / "o3",
                                                         cache_root=tmp_path / "c3"), spec, "cond",
                                        dev=torch.device("cpu"))
    assert resumed.entry.source == "computed" and resumed.entry.key == whole.entry.key == key
    assert torch.equal(flat(resumed.model.parameters()), flat(whole.model.parameters()))
    assert torch.equal(flat(resumed.raw_model.parameters()), flat(whole.raw_model.parameters()))
    history = (resumed.run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["event"] for h in history] == ["start", "resume"]


@pytest.mark.parametrize("recorded", sorted((ROOT / "weights" / "classifier").glob("*.json")), ids=lambda p: p.stem)
def test_committed_classifiers_are_current(recorded):
    """Each committed proxy classifier sits under the key this code gives its recorded inputs (data digests,
    configuration, the classifier's source and torch version): a change to the classifier's code forces a
    retrain and export (tools/export_weights.py --classifier) in the same commit."""
    from diffusion.metrics.classifier import key_of_inputs

    assert recorded.with_suffix(".pt").is_file()
    key = key_of_inputs(json.loads(recorded.read_text()))
    assert key == recorded.stem, (f"{recorded.relative_to(ROOT)} is stale (its key is now {key}): retrain the "
                                  "classifier and export it with tools/export_weights.py --classifier")
