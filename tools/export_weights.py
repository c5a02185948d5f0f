"""Export a profile's trained models from the cache to ``weights/<profile>/`` (committed with the figures).

    .venv/bin/python tools/export_weights.py --profile long [--kinds train-cond,train-uncond]

For every finished cache entry of the given kinds whose key is current (the key this working tree gives the
inputs recorded in its ``inputs.json``: same code, Python and torch version) the tool writes
``weights/<profile>/<kind>/<key>/`` with what a notebook reads back: ``inputs.json``, ``result.json``, the run's
``config.json``, ``metrics.jsonl`` and stage samples (``samples/*.npz``), and its newest checkpoint without
the optimiser state (EMA and raw weights, step, configuration). ``diffusion.report.cache.cached`` copies such a
folder into the cache when the same key is asked for, so notebooks use the weights instead of training.
Stale entries (another key for the same kind) are never exported; an older export of the same kind and the same
training seed (``train.seed``) is removed, while the models of another training seed (``tools/train_profile.py
--train-seed N``, what ``make reproduce-check TRAIN_SEED=N`` regenerates the figures with) stay beside it.

A training longer than a session is carried to the next one with ``--partial``: the unfinished entry
``<key>.partial`` is exported whole (its newest checkpoint *with* the optimiser state, ``history.jsonl``), and
``cached`` copies it back into an empty cache, where the training resumes from it.

``--classifier`` exports the profile's proxy classifier (of ``common.cond``'s data, ``common.classifier_steps``
steps) to ``weights/classifier/<key>.pt`` (``diffusion.metrics.classifier.export_classifier``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DROPPED = ("optimizer",)  # Adam's two moments: twice the size of the weights, needed only to train on


def current_key(inputs: dict) -> str:
    """The key this tree gives an entry's recorded inputs: the training fingerprint (trained models) or the
    source digest (other work) as this code computes it, with this Python and torch."""
    from diffusion.report.cache import cache_key

    if "fingerprint" in inputs:
        from diffusion.fingerprint import training_fingerprint

        return cache_key(inputs["parts"], inputs["notebook"], fingerprint=training_fingerprint())[0]
    modules = inputs.get("modules")
    return cache_key(inputs["parts"], inputs["notebook"], None if modules == "diffusion/**" else modules)[0]


def current(entry: Path) -> bool:
    """Whether the entry's key (its folder name, without ``.partial``) is current in this tree."""
    inputs = json.loads((entry / "inputs.json").read_text())
    return current_key(inputs) == entry.name.removesuffix(".partial")


def train_seed(entry: Path):
    """``train.seed`` of a trained model's recorded configuration (None for other entries)."""
    parts = json.loads((entry / "inputs.json").read_text()).get("parts")
    try:
        return parts["config"]["train"]["seed"]
    except (KeyError, TypeError):
        return None


def export(entry: Path, target: Path, partial: bool = False) -> int:
    """Copy ``entry`` to ``target`` (the slim form; ``partial``: with the optimiser state and the run's
    history, to be resumed); returns the bytes written."""
    from diffusion.checkpoint import load_checkpoint, save_checkpoint

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("inputs.json", "result.json", "arrays.npz"):
        if (entry / name).is_file():
            shutil.copy2(entry / name, tmp / name)
    run = entry / "run"
    (tmp / "run").mkdir()
    for name in ("config.json", "metrics.jsonl") + (("history.jsonl",) if partial else ()):
        if (run / name).is_file():
            shutil.copy2(run / name, tmp / "run" / name)
    if (run / "samples").is_dir():
        (tmp / "run" / "samples").mkdir()
        for npz in sorted((run / "samples").glob("step_*.npz")):
            shutil.copy2(npz, tmp / "run" / "samples" / npz.name)
    state = load_checkpoint(run / "checkpoints")
    slim = {k: v for k, v in state.items() if (partial or k not in DROPPED) and k not in ("format", "version")}
    step = int(state.get("step", 0))
    save_checkpoint(slim, tmp / "run" / "checkpoints" / f"ckpt_{step:07d}.pt")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())


def export_profile_classifier(profile: str, out: str | None) -> int:
    """Export the proxy classifier of ``profile`` (its conditional spec's data) from the cache."""
    import os

    from diffusion.experiments import profile_params, proxy_classifier_inputs
    from diffusion.metrics.classifier import export_classifier

    if out:
        os.environ["DDPM_WEIGHTS_DIR"] = str(out)
    params = profile_params(profile)
    train, test, ccfg = proxy_classifier_inputs(params["cond"], params.get("classifier_steps"))
    try:
        path = export_classifier(train, test, ccfg)
    except FileNotFoundError as exc:
        print(f"export_weights: {exc}", file=sys.stderr)
        return 2
    print(f"classifier of {train.label}: {path.relative_to(path.parents[1])} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True)
    p.add_argument("--kinds", default="train-cond,train-uncond",
                   help="comma-separated kinds (shell patterns); the width/depth variants (variant-*) are left out "
                        "by default (retrained in minutes for the MNIST profiles); add them for a profile whose variants "
                        "train for hours (cpu: --kinds 'train-*,variant-*')")
    p.add_argument("--cache-dir", default=None, help="cache root (default $DDPM_CACHE_DIR or <repo>/cache)")
    p.add_argument("--out", default=None, help="weights root (default $DDPM_WEIGHTS_DIR or <repo>/weights)")
    p.add_argument("--partial", action="store_true",
                   help="export unfinished trainings (<key>.partial, with the optimiser state) to resume elsewhere")
    p.add_argument("--classifier", action="store_true",
                   help="export the profile's proxy classifier (weights/classifier/) instead of trained models")
    a = p.parse_args(argv)
    import os

    if a.classifier:
        return export_profile_classifier(a.profile, a.out)

    cache = Path(a.cache_dir or os.environ.get("DDPM_CACHE_DIR") or ROOT / "cache") / a.profile
    if not cache.is_dir():
        print(f"export_weights: no cache for profile {a.profile!r} at {cache}; run make figures PROFILE={a.profile} first",
              file=sys.stderr)
        return 2
    patterns = [k.strip() for k in a.kinds.split(",") if k.strip()]
    from diffusion.report.cache import weights_root

    out_root = Path(a.out or weights_root()) / a.profile
    done = 0
    for kind_dir in sorted(d for d in cache.iterdir() if d.is_dir()):
        if not any(fnmatch.fnmatch(kind_dir.name, pat) for pat in patterns):
            continue
        if a.partial:
            entries = [e for e in kind_dir.iterdir() if e.is_dir() and e.name.endswith(".partial")
                       and (e / "inputs.json").is_file() and any((e / "run" / "checkpoints").glob("ckpt_*.pt"))
                       and current(e)]
        else:
            entries = [e for e in kind_dir.iterdir() if e.is_dir() and (e / "result.json").is_file() and current(e)]
        by_seed: dict = {}
        for entry in entries:
            by_seed.setdefault(train_seed(entry), []).append(entry)
        if not by_seed:
            print(f"export_weights: {kind_dir.name}: no current entry; skipped", file=sys.stderr)
        for seed, group in sorted(by_seed.items(), key=lambda item: str(item[0])):
            if len(group) != 1:
                print(f"export_weights: {kind_dir.name}: {len(group)} current entries of training seed {seed}, need "
                      "exactly one; skipped", file=sys.stderr)
                continue
            entry = group[0]
            target_kind = out_root / kind_dir.name
            if target_kind.is_dir():  # an older export of this seed, finished or not, is replaced
                for old in target_kind.iterdir():
                    if old.is_dir() and (old / "inputs.json").is_file() and train_seed(old) == seed:
                        shutil.rmtree(old)
            size = export(entry, target_kind / entry.name, partial=a.partial)
            print(f"{kind_dir.name}/{entry.name}: {size / 2**20:.1f} MiB")
            done += 1
    if not done:
        print("export_weights: nothing exported", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
