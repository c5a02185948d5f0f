#!/usr/bin/env python
"""Train one model of a figures profile, exactly as notebook 04 would, into the profile's cache.

    .venv/bin/python tools/train_profile.py --profile cpu --which cond     # or uncond, both, variants, classifier
    .venv/bin/python tools/train_profile.py --profile cpu --which cond --train-seed 1   # another training seed

The model is the one ``diffusion.experiments.trained_model`` trains for ``common.<which>`` of
``configs/profiles/<profile>.yaml``, under the same cache key, so the notebooks find it afterwards. A run longer
than a session is resumable: rerun the same command and it continues from the newest checkpoint in
``cache/<profile>/train-<which>/<key>.partial/run/`` (a committed checkpoint of an unfinished run under
``weights/<profile>/`` is copied there first). Ctrl-C or SIGTERM stops after writing a checkpoint. Progress is
printed as text (``DDPM_PROGRESS=text``), which suits ``nohup``. ``--which classifier`` trains the profile's proxy
classifier (``common.classifier_steps``) into the cache and prints its held-out accuracy; export it with
``tools/export_weights.py --classifier``. ``--which variants`` trains the width/depth variants of notebook 06
(``common.variants`` at ``variant_steps`` and ``variant_batch`` of ``notebooks.06_ablations``) under 06's keys.
``--train-seed N`` trains with ``train.seed = N`` (the models, and the variants derived from the conditional
one, that ``make reproduce-check TRAIN_SEED=N`` regenerates the figures with); they are keyed apart from the
profile's own models, so both can be committed side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="a figures profile (configs/profiles/<profile>.yaml)")
    parser.add_argument("--which", choices=("cond", "uncond", "both", "variants", "classifier"), default="both")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--train-seed", type=int, default=None, help="train.seed of the models (default: the profile's)")
    args = parser.parse_args(argv)
    if args.train_seed is not None and args.train_seed < 0:
        parser.error(f"--train-seed must be a non-negative integer, got {args.train_seed}")
    os.environ.setdefault("DDPM_PROGRESS", "text")
    import torch

    from diffusion.experiments import (TRAIN_PRODUCER, model_spec, profile_params, trained_model, variant_spec,
                                       with_overrides)
    from diffusion.report import Artefacts
    from diffusion.report.paths import PROFILES

    if args.profile not in PROFILES:
        parser.error(f"--profile must be one of {', '.join(PROFILES)}, got {args.profile!r}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.which == "classifier":
        from diffusion.experiments import proxy_classifier

        clf, test = proxy_classifier(model_spec(args.profile, "cond"),
                                     profile_params(args.profile).get("classifier_steps"))
        print(f"classifier of {clf.dataset_label}: held-out accuracy {100 * clf.accuracy:.2f}% "
              f"on {len(test.labels):,} images", flush=True)
        return 0

    def spec(which: str) -> dict:
        given = model_spec(args.profile, which)
        return given if args.train_seed is None else with_overrides(given, {"train.seed": args.train_seed})

    jobs = []  # (name, producer, kind, spec, which)
    if args.which == "variants":
        params = profile_params(args.profile, "06_ablations")
        if not params.get("variants"):
            parser.error(f"profile {args.profile} defines no width/depth variants")
        for name, overrides in params["variants"].items():
            jobs.append((f"variant {name}", "06_ablations", f"variant-{name}",
                         variant_spec(spec("cond"), overrides, params["variant_steps"], params["variant_batch"]), "cond"))
    else:
        jobs = [(which, TRAIN_PRODUCER, None, spec(which), which)
                for which in (("cond", "uncond") if args.which == "both" else (args.which,))]
    seed = "" if args.train_seed is None else f" --train-seed {args.train_seed}"
    for name, producer, kind, job_spec, which in jobs:
        art = Artefacts(args.profile, producer, out_dir=ROOT / "build" / "train_profile" / args.profile)
        try:
            tm = trained_model(art, job_spec, which, producer=producer, kind=kind)
        except KeyboardInterrupt:
            print(f"stopped; `python tools/train_profile.py --profile {args.profile} --which {args.which}{seed}` "
                  "continues from the newest checkpoint", file=sys.stderr)
            return 130
        print(f"{name}: {tm.entry.source} {tm.entry.path} (step {tm.summary.get('step')})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
