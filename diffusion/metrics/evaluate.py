"""Sample a trained model and compute the requested metrics, writing every number to a JSON file.

Metrics (names as on the command line):

- ``fid``, ``is``: FID and Inception Score with pytorch-fid's official Inception weights (section 4.1.3);
  ``fid`` against the training split's cached statistics; ``is`` as openai/improved-gan computes it (10
  splits, bias-free logits, :mod:`.inception_score`), recorded with its ``n`` and ``reportable`` (False,
  with a warning, below 5,000 samples); fewer than 20 samples are refused for ``is``.
- ``cfd``: classifier FD against the held-out split (offline proxy, :mod:`.classifier`; not FID).
- ``accuracy``: conditional accuracy of class-conditional samples (balanced classes).
- ``diversity``: within-class classifier-feature diversity of class-conditional samples.
- ``bpd``: NLL bound in bits/dim on held-out images, eq. (7), with its L_T / Σ L_{t-1} / L_0 parts.
- ``nn``: L2 nearest training images of the samples (memorisation check, figure 2a).

When the Inception weights cannot be obtained and other metrics were asked for too, ``fid``/``is`` are
recorded as ``"unavailable: …"`` and the rest is computed; if only ``fid``/``is`` were asked for, the
:class:`~.inception.InceptionWeightsMissing` error is raised.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from .images import check_finite, to_uint8

METRICS = ("fid", "is", "cfd", "accuracy", "diversity", "bpd", "nn")
DEFAULT_METRICS = ("fid", "is", "cfd", "accuracy", "bpd", "nn")
INCEPTION_METRICS = {"fid", "is"}
CLASSIFIER_METRICS = {"cfd", "accuracy", "diversity"}
CONDITIONAL_METRICS = {"accuracy", "diversity"}
NN_LISTED = 64  # samples whose nearest-neighbour index and distance are listed in the JSON


def parse_metrics(metrics) -> list[str]:
    """Metric names from a comma-separated string or a sequence; ``ValueError`` on unknown or no names."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [str(m).strip() for m in metrics]
    names = [m for m in dict.fromkeys(names) if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics: unknown name(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"metrics must name at least one of {', '.join(METRICS)}")
    return names


def _generate(diffusion, model, n, shape, batch_size, sampler, steps, eta, guidance_scale, labels, null_class,
              seed, device, progress):
    from ..samplers import sample

    gen = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        y = None if labels is None else labels[lo:hi].to(device)
        x = sample(diffusion, model, (hi - lo, *shape), sampler=sampler, steps=steps, eta=eta,
                   guidance_scale=guidance_scale, y=y, null_class=null_class, generator=gen, progress=progress,
                   device=device)
        check_finite(x, f"samples {lo}..{hi - 1}")
        chunks.append(to_uint8(x).cpu())
    return torch.cat(chunks), (time.perf_counter() - t0) / n


def evaluate(model, diffusion, data_name: str, metrics=DEFAULT_METRICS, num_samples: int = 2048,
             sampler: str = "ancestral", steps: int | None = None, eta: float = 0.0,
             guidance_scale: float | None = None, num_classes: int | None = None, batch_size: int = 256,
             bpd_images: int = 256, bpd_batch_size: int = 64, seed: int = 0, device=None, data_root=None,
             allow_download: bool = True, progress: bool = True, out_json=None, image_size: int | None = None) -> dict:
    """Generate ``num_samples`` samples of ``model`` and compute ``metrics`` against dataset ``data_name``.

    Args:
        model: ``model(x, t, y=None)``; class-conditional when ``num_classes`` (default:
            ``model.num_classes`` if present) is a number K — samples are then generated for the
            classes 0, 1, …, K−1 in turn with the null token K for guidance.
        diffusion: the trained ``GaussianDiffusion`` (all T steps; ``steps`` respaces sampling only).
        data_name: a ``diffusion.data.load_dataset`` name; ``data_root`` and ``image_size`` (the training
            resolution, ``data.image_size`` of the config) as there.
        metrics: names from ``METRICS`` (sequence or comma-separated string).
        sampler, steps, eta, guidance_scale: passed to ``diffusion.samplers.sample`` (guidance needs a
            class-conditional model).
        bpd_images: held-out images for ``bpd`` (a seeded random subset of the test split).
        allow_download: download the Inception weights if absent (``False``: never touch the network;
            the command line's ``--no-download``).
        out_json: if given, the result is also written there as JSON.

    Returns a dict with the dataset label, sampler settings, ``metrics`` (one entry per name) and
    ``warnings``. Raises ``ValueError`` for unknown metrics or bad arguments and for NaN samples,
    ``DatasetNotFoundError`` for missing data, ``InceptionWeightsMissing`` if only fid/is were asked
    for and the weights are not obtainable.
    """
    from ..data import load_dataset
    from ..eval_mode import check_eval_mode
    from .inception import InceptionWeightsMissing, load_inception, weights_path
    from .inception_score import DEFAULT_SPLITS, check_splits

    names = parse_metrics(metrics)
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if "is" in names:
        try:
            check_splits(num_samples, DEFAULT_SPLITS)
        except ValueError as err:
            raise ValueError(f"num_samples: {err}") from None
    if batch_size < 1 or bpd_images < 1 or bpd_batch_size < 1:
        raise ValueError(f"batch_size, bpd_images and bpd_batch_size must be positive, got {batch_size}, "
                         f"{bpd_images}, {bpd_batch_size}")
    if "bpd" in names:  # refused now, not after the samples of the other metrics
        check_eval_mode(model, "bits/dim")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    conditional = bool(num_classes)
    if not conditional and CONDITIONAL_METRICS & set(names):
        raise ValueError(f"metrics {sorted(CONDITIONAL_METRICS & set(names))} need a class-conditional model "
                         "(num_classes); this model is unconditional")
    if guidance_scale is not None and not conditional:
        raise ValueError("guidance_scale needs a class-conditional model (num_classes); this model is unconditional")
    if device is None:
        device = next((p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
    device = torch.device(device)

    notes: list[str] = []

    def note(msg: str) -> None:
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)

    # everything that can fail cheaply is checked before sampling
    need_train = bool(set(names) - {"bpd"})  # samples are generated with the training images' shape
    need_test = bool(({"bpd"} | CLASSIFIER_METRICS) & set(names))
    train = load_dataset(data_name, "train", data_root, image_size=image_size) if need_train else None
    test = load_dataset(data_name, "test", data_root, image_size=image_size) if need_test else None
    data = train if train is not None else test  # one of them is always loaded
    results: dict = {}
    net = None
    if INCEPTION_METRICS & set(names):
        try:
            net = load_inception(device, allow_download=allow_download)
        except InceptionWeightsMissing as err:
            if set(names) <= INCEPTION_METRICS:
                raise
            msg = f"unavailable: Inception weights not obtainable offline (expected at {weights_path()})"
            for m in INCEPTION_METRICS & set(names):
                results[m] = msg
            notes.append(str(err))
    if conditional and data.num_classes != num_classes:
        raise ValueError(f"the model has num_classes={num_classes} but {data.label} has {data.num_classes} classes")
    clf = None
    if CLASSIFIER_METRICS & set(names):
        from .classifier import cached_classifier

        clf = cached_classifier(train, test, device=device, progress=progress)
    if ({"fid", "cfd"} & set(names)) and num_samples < 2048:
        note(f"FID / classifier FD from {num_samples} < 2048 samples are biased (upwards) and not comparable "
             "with values from more samples")

    record = {"dataset": data.label, "data_name": data_name,
              "num_samples": num_samples, "sampler": sampler,
              "steps": int(steps) if steps is not None else int(diffusion.num_timesteps), "eta": float(eta),
              "guidance_scale": guidance_scale, "class_conditional": conditional, "seed": seed,
              "num_timesteps": int(diffusion.num_timesteps), "device": str(device)}

    samples = labels = None
    if set(names) - {"bpd"}:
        labels = torch.arange(num_samples) % num_classes if conditional else None
        samples, sec_per_image = _generate(diffusion, model, num_samples, data.images.shape[1:], batch_size, sampler,
                                           steps, eta, guidance_scale, labels, num_classes if conditional else None,
                                           seed, device, progress)
        record["sampling_seconds_per_image"] = sec_per_image

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is biased.*")
        warnings.filterwarnings("ignore", message="Inception Score from N=")  # recorded as a note below
        if net is not None:
            from .fid import activation_statistics, frechet_distance, reference_statistics
            from .inception import inception_features_and_logits
            from .inception_score import MIN_REPORTABLE_SAMPLES, inception_score_record

            feats, logits = inception_features_and_logits(samples, net, progress=progress)
            if "fid" in names:
                mu_ref, sigma_ref = reference_statistics(train, net, progress=progress)
                results["fid"] = frechet_distance(*activation_statistics(feats), mu_ref, sigma_ref)
            if "is" in names:
                results["is"] = inception_score_record(logits, DEFAULT_SPLITS)
                if not results["is"]["reportable"]:
                    note(f"Inception Score from {num_samples} < {MIN_REPORTABLE_SAMPLES} samples is not "
                         "reportable (reportable: false); published values use 50,000")
        if clf is not None:
            from .classifier import class_diversity, classifier_fd, conditional_accuracy

            record["classifier_accuracy"] = clf.accuracy
            if "cfd" in names:
                results["cfd"] = classifier_fd(clf, samples, test.images)
            if "accuracy" in names:
                results["accuracy"] = conditional_accuracy(clf, samples, labels)
            if "diversity" in names:
                results["diversity"] = class_diversity(clf, samples, labels)
    if "bpd" in names:
        from .nll import bits_per_dim

        n = min(bpd_images, len(test.images))
        idx = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))[:n]
        results["bpd"] = bits_per_dim(diffusion, model, test.images[idx],
                                      test.labels[idx] if conditional else None, batch_size=bpd_batch_size,
                                      generator=torch.Generator(device=device).manual_seed(seed), device=device,
                                      progress=progress)
        results["bpd"]["conditioned_on_true_labels"] = conditional
    if "nn" in names:
        from .neighbours import nearest_neighbours

        idx, dist = nearest_neighbours(samples, train.images, k=1, device=device, progress=progress)
        d = dist[:, 0]
        results["nn"] = {"min_distance": float(d.min()), "median_distance": float(d.median()),
                         "mean_distance": float(d.mean()), "distance": "L2 over pixels scaled to [0, 1]",
                         "first_indices": idx[:NN_LISTED, 0].tolist(), "first_distances": d[:NN_LISTED].tolist()}

    record["metrics"] = {m: results[m] for m in names}
    record["warnings"] = notes
    if out_json is not None:
        path = Path(out_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record
