"""The experiments of chapter 4 as the notebooks run them: a profile's models, trained once and cached.

A *model spec* (from ``configs/profiles/<profile>.yaml``, ``common.cond`` / ``common.uncond``) names a config
file and ``--set``-style overrides::

    {"config": "configs/mnist5k.yaml", "set": {"data.name": "mnist5k", "model.class_cond": true},
     "stage": {"num": 16, "steps": 50, "sampler": "ancestral"}}

``stage`` sets the samples the trainer draws at
``train.sample_every`` (default 16 images, DDIM with min(50, T) steps); ``sampling: {compile: true}`` makes
:func:`generate` sample through ``torch.compile`` (:meth:`TrainedModel.network`; not part of the trained model's key).

:func:`trained_model` trains it through :func:`diffusion.train.train` inside :meth:`Artefacts.cached`
under the key of notebook ``04_training`` (config without its bookkeeping settings, data digest, stage samples,
torch version and the training fingerprint of ``diffusion.fingerprint``), so notebooks 05 and 06 asking for the
same spec get the same run, a changed input trains anew, and a refactor that trains the same way keeps it.
:func:`generate` samples a trained model and caches the images. :func:`train_toy` trains the 2-D toy model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffusion.checked_compile import CheckedCompile
from diffusion.report import PROGRESS, Artefacts, CacheEntry, dataset_label_zh, repo_root
from diffusion.report.cache import code_of

__all__ = ["BOOKKEEPING", "SAMPLING_BATCH", "FeatureSpace", "TrainedModel", "batch_sizes", "device", "generate", "load_data", "load_run_config", "model_spec", "profile_params",
           "proxy_classifier", "proxy_classifier_inputs", "train_toy", "trained_model", "training_key", "uncond_feature_space", "variant_spec", "with_overrides"]

TRAIN_PRODUCER = "04_training"
RECIPE = hashlib.sha256(code_of(Path(__file__))).hexdigest()
"""SHA-256 of this file's code (its syntax tree without docstrings, as the cache hashes modules): part of the keys
of generated samples and of the toy model, whose recipes (sampling batches, the toy's training loop) live here.
Trained U-Nets are keyed on the training fingerprint instead."""
SAMPLING_BATCH = 128
"""Network inputs per call when sampling, where a profile's ``sampling.batch`` does not say: the fastest for the
MNIST-5k U-Net on the 2-core CPU (``benchmarks/cpu_sampling.py``: 1.1-1.2x batch 256). The cpu profile's U-Nets
sample faster in smaller batches (``benchmarks/cpu_batch.py``)."""
STAGE_SAMPLES = 16  # images the trainer samples at each train.sample_every step (EMA weights, fixed noise)
BOOKKEEPING = ("train.ckpt_every", "train.ckpt_every_minutes", "train.keep_last", "data.root")
"""Settings left out of a trained model's key: when checkpoints are written and kept, and where the data were
read from, change neither the weights, the logged metrics nor the stage samples."""


def device() -> torch.device:
    """CUDA when available (with cuDNN autotuning and TF32 switched on: ``diffusion.fast``), else the CPU."""
    from diffusion.fast import configure_backends

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_backends(dev)
    return dev


def profile_params(profile: str, notebook: str | None = None) -> dict:
    """The parameters ``make figures`` gives ``notebook`` under ``configs/profiles/<profile>.yaml``: its
    ``common`` section updated by ``notebooks.<notebook>`` (only ``common`` without a notebook)."""
    import yaml

    prof = yaml.safe_load((repo_root() / "configs" / "profiles" / f"{profile}.yaml").read_text())
    own = (prof.get("notebooks") or {}).get(notebook) if notebook else None
    return {**(prof.get("common") or {}), **(own or {})}


def model_spec(profile: str, which: str, given: dict | None = None) -> dict:
    """``given`` if not None, else ``common.<which>`` of ``configs/profiles/<profile>.yaml`` (for running
    a notebook interactively without papermill's parameters)."""
    if which not in ("cond", "uncond"):
        raise ValueError(f"which must be 'cond' or 'uncond', got {which!r}")
    if given is not None:
        return given
    return profile_params(profile)[which]


def _override(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def load_run_config(spec: dict):
    """The :class:`diffusion.config.Config` of a model spec (config path relative to the repository)."""
    from diffusion.config import load_config

    if not isinstance(spec, dict) or "config" not in spec:
        raise ValueError(f"spec must be a dict with a 'config' path and optional 'set' overrides, got {spec!r}")
    path = Path(spec["config"])
    path = path if path.is_absolute() else repo_root() / path
    return load_config(path, [_override(k, v) for k, v in (spec.get("set") or {}).items()])


def load_data(spec: dict, split: str = "train", cfg=None):
    """The ``ImageData`` a spec trains on (``split`` "train" or "test"), at the config's ``data.image_size``."""
    from diffusion.data import load_dataset

    cfg = cfg or load_run_config(spec)
    return load_dataset(cfg.data.name, split, root=cfg.data.root, image_size=cfg.data.image_size)


def proxy_classifier_inputs(spec: dict, steps: int | None = None):
    """(train split, test split, ``ClassifierConfig``) of the proxy classifier of the spec's data: the
    dataset's default configuration with ``steps`` optimiser steps when given."""
    import dataclasses

    from diffusion.metrics.classifier import DEFAULT_CONFIGS, ClassifierConfig

    cfg = load_run_config(spec)
    train, test = load_data(spec, "train", cfg), load_data(spec, "test", cfg)
    ccfg = DEFAULT_CONFIGS.get(train.name, ClassifierConfig())
    if steps is not None:
        ccfg = dataclasses.replace(ccfg, steps=int(steps))
    return train, test, ccfg


def proxy_classifier(spec: dict, steps: int | None = None, dev: torch.device | None = None):
    """The offline proxy classifier (``diffusion.metrics.classifier``) of the spec's data (same pooling),
    trained on its train split with ``steps`` optimiser steps (default: the dataset's default), cached (or
    taken from a committed classifier of the same key)."""
    from diffusion.metrics.classifier import cached_classifier

    train, test, ccfg = proxy_classifier_inputs(spec, steps)
    return cached_classifier(train, test, ccfg, dev or device()), test


@dataclass
class FeatureSpace:
    """The feature space an unconditional model's FD and KID are measured in: ``features(images)`` (uint8
    N×C×H×W at the model's size → float64 N×128) and the held-out ``reference`` features, with a ``name`` and
    the ``why`` a report states."""

    name: str
    why: str
    features: object
    reference: np.ndarray
    classifier: object


def uncond_feature_space(uncond: dict, cond: dict, steps: int | None = None) -> FeatureSpace:
    """The feature space of the unconditional model of ``uncond``.

    Data with classes (MNIST-5k) have their own proxy classifier (:func:`proxy_classifier`), whose penultimate
    features carry the classifier FD and KID. Data without classes (the CelebA subset) have none; they are
    measured in the features of the conditional spec's proxy classifier (the CIFAR-10 copy's), on images
    average-pooled to its input size: a network trained on natural images of *another* dataset, as FID measures
    CelebA in the features of an Inception network trained on ImageNet. Its reference is the held-out split of
    the unconditional data, pooled the same way."""
    from diffusion.metrics.classifier import classifier_features

    ucfg = load_run_config(uncond)
    test = load_data(uncond, "test", ucfg)
    own = test.num_classes > 0
    clf, clf_test = proxy_classifier(uncond if own else cond, steps)
    size = clf_test.image_size
    if test.images.shape[1] != clf_test.images.shape[1] or test.image_size % size:
        raise ValueError(f"cannot measure {test.label} ({tuple(test.images.shape[1:])}) in the features of the "
                         f"{clf.dataset_label} classifier ({tuple(clf_test.images.shape[1:])})")

    def features(images) -> np.ndarray:
        images = torch.as_tensor(np.asarray(images))
        factor = images.shape[-1] // size
        if factor > 1:
            images = torch.nn.functional.avg_pool2d(images.float(), factor).round().clamp(0, 255).to(torch.uint8)
        return classifier_features(clf, images)

    clf_zh, test_zh = dataset_label_zh(clf.dataset_label), dataset_label_zh(test.label)
    if own:
        name, why = f"{clf_zh} 代理分类器的特征", "该数据集自身有类别标签，代理分类器就在它的训练集上训练"
    else:
        name = f"{clf_zh} 代理分类器的特征（图像平均池化到 {size}×{size}）"
        why = (f"{test_zh} 没有类别标签，无法训练它自己的代理分类器，因此改用在另一数据集的自然图像上训练的分类器，"
               "正如 FID 用在 ImageNet 上训练的 Inception 网络度量 CelebA")
    return FeatureSpace(name, why, features, features(test.images), clf)


@dataclass
class TrainedModel:
    """A profile's trained model: EMA and raw weights (eval mode), its diffusion, data and training record."""

    which: str
    cfg: object
    model: torch.nn.Module          # EMA weights: what sampling and evaluation use
    raw_model: torch.nn.Module      # the optimised weights
    diffusion: object
    data: object                    # ImageData, train split
    null_class: int | None
    entry: CacheEntry
    summary: dict
    metrics: list = field(default_factory=list)
    stage_sampler: str = "ddim"     # the sampler of the stage samples (``stage.sampler`` of the spec)
    compile_sampling: bool = False  # sample through ``torch.compile`` (``sampling.compile`` of the spec)
    sampling_batch: int = SAMPLING_BATCH  # network inputs per call when sampling (``sampling.batch`` of the spec)
    _compiled: dict = field(default_factory=dict, repr=False)

    def images_per_batch(self, guidance_scale: float | None = None, per_call: int | None = None) -> int:
        """Images sampled together so that each network call holds at most ``per_call`` inputs (default
        ``sampling_batch``): half as many where classifier-free guidance evaluates both predictions in one pass
        (:func:`diffusion.guidance.inputs_per_image`)."""
        from diffusion.guidance import inputs_per_image

        return max(1, (per_call or self.sampling_batch) // inputs_per_image(guidance_scale))

    def network(self, use_ema: bool = True) -> torch.nn.Module:
        """What :func:`generate` samples with: the EMA (or raw) weights, through ``torch.compile`` when
        ``compile_sampling`` (compiled once per process, on first use; :class:`diffusion.checked_compile.CheckedCompile`
        keeps a batch shape on the compiled route only where it agrees with the eager network). On a 2-core CPU the compiled U-Net
        samples 1.45x as fast as diffusers' eager ``UNet2DModel`` and our eager one 0.98x
        (``benchmarks/cpu_vs_diffusers.py``); compiling costs 35-50 s per batch shape on a 2-core AMD EPYC
        (``benchmarks/cpu_batch.py``), which is why :func:`generate` splits a set into batches of one size."""
        net = self.model if use_ema else self.raw_model
        if not self.compile_sampling:
            return net
        if use_ema not in self._compiled:  # each new batch shape checked against the eager network once
            self._compiled[use_ema] = CheckedCompile(net)
        return self._compiled[use_ema]

    @property
    def run_dir(self) -> Path:
        return self.entry.path / "run"

    def stage_samples(self) -> list[tuple[int, np.ndarray]]:
        """(step, uint8 images N×C×H×W) for every ``train.sample_every`` step, in step order."""
        out = []
        for npz in sorted((self.run_dir / "samples").glob("step_*.npz")):
            with np.load(npz) as z:
                out.append((int(npz.stem.split("_")[1]), z["images"]))
        return out


def _config_dict(cfg) -> dict:
    from diffusion.config import config_to_dict

    return config_to_dict(cfg)


def _stage(spec: dict, cfg) -> tuple[int, int, str]:
    """(number, steps, sampler) of the stage samples of ``spec`` (``stage``; steps at most T)."""
    stage = {"num": STAGE_SAMPLES, "steps": 50, "sampler": "ddim", **(spec.get("stage") or {})}
    return int(stage["num"]), min(int(stage["steps"]), cfg.diffusion.num_timesteps), str(stage["sampler"])


def training_key(spec: dict, which: str, data_digest: str | None = None) -> dict:
    """The key parts of the model ``spec`` trains (besides the training fingerprint and torch version that
    :func:`diffusion.report.cache.cache_key` adds): ``which``, the configuration without :data:`BOOKKEEPING`,
    the data digest (``data_digest``, else that of the loaded training split) and the stage samples
    ``[num, steps, sampler]``."""
    cfg = load_run_config(spec)
    config = _config_dict(cfg)
    for dotted in BOOKKEEPING:
        section, name = dotted.split(".")
        config.get(section, {}).pop(name, None)
    digest = data_digest if data_digest is not None else load_data(spec, "train", cfg).digest
    return {"which": which, "config": config, "data": digest, "stage": list(_stage(spec, cfg))}


def trained_model(art: Artefacts, spec: dict, which: str, dev: torch.device | None = None,
                  producer: str = TRAIN_PRODUCER, kind: str | None = None) -> TrainedModel:
    """Train (or fetch from the cache) the model of ``spec``; ``which`` is ``cond`` or ``uncond``.

    The cache key is ``producer``'s (04_training by default) whatever notebook asks, so 05 and 06 reuse
    04's run; ``kind`` names the cache folder (default ``train-<which>``). The run folder is
    ``<entry>/run`` (``checkpoints/``, ``metrics.jsonl``, ``samples/step_*.npz``); an interrupted training
    (the ``full`` profile) resumes from its last checkpoint when the notebook is rerun.
    """
    from diffusion.checkpoint import load_checkpoint
    from diffusion.config import build_diffusion, build_model
    from diffusion.fingerprint import training_fingerprint
    from diffusion.model_info import count_parameters
    from diffusion.train import train

    if which not in ("cond", "uncond"):
        raise ValueError(f"which must be 'cond' or 'uncond', got {which!r}")
    dev = dev or device()
    cfg = load_run_config(spec)
    data = load_data(spec, "train", cfg)
    sample_num, sample_steps, stage_sampler = _stage(spec, cfg)

    def work(folder: Path) -> dict:
        result = train(cfg, data=data, out_dir=folder / "run", device=dev, resume="auto", sample_num=sample_num,
                       sample_sampler=stage_sampler, sample_steps=sample_steps)
        if result["interrupted"]:
            raise KeyboardInterrupt(f"training of the {which} model interrupted at step {result['step']}; "
                                    "rerun to resume")
        with torch.random.fork_rng(devices=[]):  # counting builds a network; the caller's randomness stays
            params = count_parameters(build_model(cfg, data))
        return {k: result[k] for k in ("step", "loss", "ema_loss", "wall_time_s", "elapsed_s", "images_per_s")} | {
            "params": params, "device": str(dev), "dataset": data.label}

    key = training_key(spec, which, data.digest)
    entry = art.cached(key, work, kind=kind or f"train-{which}", producer=producer,
                       fingerprint=training_fingerprint())
    state = load_checkpoint(entry.path / "run" / "checkpoints", map_location=dev)
    model, raw = build_model(cfg, data).to(dev), build_model(cfg, data).to(dev)
    raw.load_state_dict(state["model"])
    ema_state = state["ema"]
    model.load_state_dict(ema_state.get("module", ema_state) if isinstance(ema_state, dict) else ema_state)
    model.eval(), raw.eval()
    metrics_path = entry.path / "run" / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.is_file() else []
    null_class = model.num_classes if cfg.model.class_cond else None
    sampling = spec.get("sampling") or {}
    batch = sampling.get("batch", SAMPLING_BATCH)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"sampling.batch of the {which} model must be a positive integer (network inputs per call "
                         f"when sampling), got {batch!r}")
    return TrainedModel(which, cfg, model, raw, build_diffusion(cfg), data, null_class, entry, entry.result, metrics,
                        stage_sampler=stage_sampler, compile_sampling=bool(sampling.get("compile", False)),
                        sampling_batch=batch)


@torch.no_grad()
def generate(art: Artefacts, tm: TrainedModel, n: int, *, sampler: str = "ddim", steps: int | None = None,
             eta: float = 0.0, guidance_scale: float | None = None, y=None, seed: int = 0, batch_size: int | None = None,
             use_ema: bool = True, var_type: str | None = None, tag: str = "samples",
             producer: str | None = None) -> dict:
    """``n`` samples of ``tm`` as uint8 N×C×H×W (``images``), their labels (``labels``, −1 if none) and the
    sampling wall time per image (``seconds_per_image``, summed over the runs that computed them), cached under
    ``tag`` keyed by the model's cache key and every sampling argument; ``producer`` names the notebook
    whose samples these are when another notebook reuses them. ``batch_size``: network inputs per call (default
    the profile's, ``tm.sampling_batch``); the images go in :func:`batch_sizes` batches of at most
    ``tm.images_per_batch``, half of it under classifier-free guidance.

    Each finished batch is saved with the generator's state after it (:func:`_batch_path`), so an interrupted
    call resumes after its last finished batch and returns exactly the images of an uninterrupted one."""
    from diffusion.metrics.images import to_uint8
    from diffusion.samplers import sample

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    per_batch = tm.images_per_batch(guidance_scale, batch_size)
    sizes = batch_sizes(n, per_batch)
    labels = None if y is None else np.asarray(y, dtype=np.int64).reshape(-1)
    if labels is not None and labels.shape[0] != n:
        raise ValueError(f"y must hold n={n} labels, got {labels.shape[0]}")
    diffusion = tm.diffusion
    if var_type is not None and var_type != tm.cfg.diffusion.var_type:
        from diffusion.gaussian_diffusion import GaussianDiffusion

        diffusion = GaussianDiffusion(tm.diffusion.betas, tm.diffusion.model_mean_type, var_type, tm.diffusion.loss_type)
    key = {"recipe": RECIPE, "model": tm.entry.key, "n": n, "sampler": sampler, "steps": steps, "eta": eta, "w": guidance_scale,
           "y": None if labels is None else labels.tolist(), "seed": seed, "ema": use_ema, "var": var_type,
           "tag": tag, "batch": per_batch} | ({"compiled": True} if tm.compile_sampling else {})

    def work(folder: Path) -> dict:
        from diffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

        model = tm.network(use_ema)
        plain = tm.model if use_ema else tm.raw_model
        dev = next(plain.parameters()).device
        gen = torch.Generator(device=dev).manual_seed(seed)
        c, s = plain.in_channels, plain.image_size
        out, seconds, resuming = [], 0.0, True
        for lo, hi in zip(np.cumsum([0, *sizes[:-1]]).tolist(), np.cumsum(sizes).tolist()):
            path = _batch_path(folder, lo)
            if resuming and path.is_file():
                try:
                    done = load_checkpoint(path)
                except CheckpointError:
                    resuming = False  # unreadable: computed again from here
                else:
                    gen.set_state(done["generator"])
                    out.append(done["images"])
                    seconds += float(done["seconds"])
                    continue
            resuming = False
            t0 = time.perf_counter()
            yb = None if labels is None else torch.as_tensor(labels[lo:hi], device=dev)
            x = sample(diffusion, model, (hi - lo, c, s, s), sampler=sampler, steps=steps, eta=eta,
                       guidance_scale=guidance_scale, y=yb, null_class=tm.null_class, generator=gen,
                       progress=n * (steps or diffusion.num_timesteps) > 20000, device=dev)
            images = to_uint8(x).cpu()  # the copy waits for the device, so the time below is complete
            took = time.perf_counter() - t0
            save_checkpoint({"images": images, "generator": gen.get_state(), "seconds": took}, path)
            out.append(images)
            seconds += took
        return {"images": torch.cat(out).numpy(), "seconds_per_image": seconds / n,
                "labels": labels if labels is not None else np.full(n, -1, dtype=np.int64)}

    return art.cached(key, work, kind=tag, producer=producer,
                      modules=["diffusion.samplers", "diffusion.metrics.images"]).result


def batch_sizes(n: int, at_most: int) -> list[int]:
    """``n`` images in the fewest batches of at most ``at_most``, of one size where it divides ``n`` and otherwise
    of two sizes one apart, larger first: each new batch shape costs a compiled network a compilation (35-50 s
    on a 2-core CPU), so 500 images at 128 go as 4 × 125, not 3 × 128 + 116."""
    if not isinstance(n, int) or n < 1 or not isinstance(at_most, int) or at_most < 1:
        raise ValueError(f"n and at_most must be positive integers, got {n!r} and {at_most!r}")
    count = -(-n // at_most)
    size, larger = divmod(n, count)
    return [size + 1] * larger + [size] * (count - larger)


def _batch_path(folder: Path, first: int) -> Path:
    """Where :func:`generate` keeps the finished batch starting at image ``first`` until the entry is stored."""
    return folder / PROGRESS / f"batch_{first:07d}.pt"


def with_overrides(spec: dict, overrides: dict) -> dict:
    """A copy of ``spec`` whose ``set`` overrides are updated by ``overrides``."""
    return {**spec, "set": {**(spec.get("set") or {}), **overrides}}


def variant_spec(spec: dict, overrides: dict, steps: int, batch: int) -> dict:
    """A width/depth variant of ``spec`` (section 4.4.2): its model ``overrides``, trained ``steps`` steps at
    ``batch`` with a warm-up of a quarter of the run (at most 200 steps), no stage samples, one checkpoint."""
    steps = int(steps)
    return with_overrides(spec, {**overrides, "train.total_steps": steps, "train.batch_size": int(batch),
                                 "train.sample_every": [], "train.warmup_steps": min(200, steps // 4 + 1),
                                 "train.ckpt_every": steps})


def train_toy(art: Artefacts, name: str, n_points: int, num_timesteps: int, train_steps: int, batch_size: int,
              hidden: int, seed: int = 0, lr: float = 3e-3) -> tuple[torch.nn.Module, dict]:
    """Train :class:`diffusion.toy.ToyMLP` with L_simple (eq. 14) on a 2-D toy set through
    :func:`diffusion.toy.fit_toy_mlp` (cached); returns the model (eval mode) and
    ``{"loss": [...per step...], "wall_time_s": ...}``."""
    from diffusion.gaussian_diffusion import create_diffusion
    from diffusion.toy import ToyMLP, fit_toy_mlp, make_toy_2d

    def work(folder: Path) -> dict:
        t0 = time.perf_counter()
        model, losses = fit_toy_mlp(make_toy_2d(name, n_points, seed=seed), create_diffusion("linear", num_timesteps),
                                    train_steps, batch_size, hidden, lr=lr, seed=seed, progress=True)
        torch.save(model.state_dict(), folder / "model.pt")
        return {"loss": np.asarray(losses), "wall_time_s": time.perf_counter() - t0}

    key = {"recipe": RECIPE, "name": name, "n": n_points, "T": num_timesteps, "steps": train_steps, "batch": batch_size,
           "hidden": hidden, "seed": seed, "lr": lr}
    entry = art.cached(key, work, kind="toy", modules=["diffusion.toy", "diffusion.gaussian_diffusion"])
    model = ToyMLP(dim=2, hidden=hidden, num_layers=3, time_dim=32)
    model.load_state_dict(torch.load(entry.path / "model.pt", weights_only=True))
    return model.eval(), entry.result
