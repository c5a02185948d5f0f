#!/usr/bin/env python
"""Train one model of a figures profile, exactly as notebook 04 would, into the profile's cache.

    .venv/bin/python tools/train_profile.py --profile cpu --which cond     # or uncond, both, classifier

The model is the one ``diffusion.experiments.trained_model`` trains for ``common.<which>`` of
``configs/profiles/<profile>.yaml``, under the same cache key, so the notebooks find it afterwards. A run longer
than a session is resumable: rerun the same command and it continues from the newest checkpoint in
``cache/<profile>/train-<which>/<key>.partial/run/`` (a committed checkpoint of an unfinished run under
``weights/<profile>/`` is copied there first). Ctrl-C or SIGTERM stops after writing a checkpoint. Progress is
printed as text (``DDPM_PROGRESS=text``), which suits ``nohup``. ``--which classifier`` trains the profile's proxy
classifier (``common.classifier_steps``) into the cache and prints its held-out accuracy; export it with
``tools/export_weights.py --classifier``.
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
    parser.add_argument("--which", choices=("cond", "uncond", "both", "classifier"), default="both")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DDPM_PROGRESS", "text")
    import torch

    from diffusion.experiments import TRAIN_PRODUCER, model_spec, trained_model
    from diffusion.report import Artefacts
    from diffusion.report.paths import PROFILES

    if args.profile not in PROFILES:
        parser.error(f"--profile must be one of {', '.join(PROFILES)}, got {args.profile!r}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.which == "classifier":
        import yaml

        from diffusion.experiments import proxy_classifier

        prof = yaml.safe_load((ROOT / "configs" / "profiles" / f"{args.profile}.yaml").read_text())
        clf, test = proxy_classifier(model_spec(args.profile, "cond"), prof["common"].get("classifier_steps"))
        print(f"classifier of {clf.dataset_label}: held-out accuracy {100 * clf.accuracy:.2f}% "
              f"on {len(test.labels):,} images", flush=True)
        return 0
    art = Artefacts(args.profile, TRAIN_PRODUCER, out_dir=ROOT / "build" / "train_profile" / args.profile)
    for which in ("cond", "uncond") if args.which == "both" else (args.which,):
        try:
            tm = trained_model(art, model_spec(args.profile, which), which)
        except KeyboardInterrupt:
            print(f"stopped; `python tools/train_profile.py --profile {args.profile} --which {which}` continues "
                  "from the newest checkpoint", file=sys.stderr)
            return 130
        print(f"{which}: {tm.entry.source} {tm.entry.path} (step {tm.summary.get('step')})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
