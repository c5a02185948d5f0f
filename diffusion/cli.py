"""The command line: ``python -m diffusion train | sample | evaluate | info`` (console script ``ddpm``).

- ``train --config configs/mnist5k.yaml [--set k=v ...] [--out runs/x] [--resume [--allow-config-change]]
  [--data-root P] [--steps N] [--device cpu|cuda]``: trains with :class:`diffusion.train.Trainer` (progress bar, metrics log,
  checkpoints; Ctrl-C or SIGTERM saves a checkpoint and exits; ``--resume`` continues exactly).
  Under ``torchrun --nproc_per_node=N -m diffusion train ...`` it trains with DistributedDataParallel.
- ``sample --ckpt RUN_OR_FILE --sampler ancestral|ddim|dpmpp2m --steps N --eta E --guidance-scale W
  --classes 0,1,2 --num N --seed S --out grid.png``: a PNG grid and an ``.npz`` beside it (EMA weights).
- ``evaluate --ckpt ... --metrics fid,is,cfd,accuracy,bpd,nn --num-samples N [--no-download]``: calls
  :func:`diffusion.metrics.evaluate.evaluate` and writes its JSON (stdout holds only the JSON; logs and
  progress go to stderr).
- ``info --config configs/cifar10.yaml``: the U-Net by stage, parameter counts (without and with the class
  embedding) and FLOPs per image.
- ``import-diffusers SRC --out CKPT [--data NAME]``: a published DDPM checkpoint in diffusers' format (folder
  or hub id) converted by :mod:`diffusion.convert` into a checkpoint that ``sample``/``evaluate`` accept.

Bad input (unknown option, bad value, malformed YAML, missing file or dataset, unusable checkpoint, an
output path that cannot be written, a run folder locked by another run, a full disk) prints one paragraph
to stderr and exits with status 2, never a traceback (``--debug`` or ``DDPM_DEBUG=1`` adds it). Output
paths are checked before any work starts; ``train`` locks its run folder (``diffusion.runs``). A NaN loss
exits with status 1; an interrupted training with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)
after saving its checkpoint; Ctrl-C before training starts with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
from pathlib import Path

__all__ = ["DATASET_SHAPES", "build_parser", "data_standin", "load_trained", "main"]

SAMPLERS = ("ancestral", "ddim", "dpmpp2m")


class UsageError(ValueError):
    """Bad command-line input detected after parsing."""


# ---------------------------------------------------------------------------------------------------- helpers
def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, described as ``what`` in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "a non-negative integer")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _class_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class indices like 0,1,2, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative class indices, got {text!r}")
    return values


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    return path


def _device(text: str):
    from diffusion.train import resolve_device

    try:
        return resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# (channels, image size, number of classes) of each dataset of diffusion.data, so that `info` can build a
# config's model without the dataset on disk.
DATASET_SHAPES = {"mnist5k": (1, 32, 10), "cifar10": (3, 32, 10), "cifar10-jpeg": (3, 32, 10),
                  "celeba64": (3, 64, 0), "celeba-6k": (3, 64, 0)}


def data_standin(channels: int, image_size: int, num_classes: int):
    """What ``build_model`` needs of a dataset (channels, image size, classes), without its pixels."""
    return types.SimpleNamespace(channels=int(channels), image_size=int(image_size), num_classes=int(num_classes))


def load_trained(ckpt: str | Path, device=None, use_ema: bool = True):
    """Model (EMA weights unless ``use_ema=False``, eval mode), diffusion, config and checkpoint of a
    trained run; ``ckpt`` is a checkpoint file or a run folder (its newest checkpoint)."""
    from diffusion.checkpoint import CheckpointError, check_weights_fit, load_checkpoint, require_entries
    from diffusion.config import build_diffusion, build_model, config_from_checkpoint
    from diffusion.fast import configure_backends
    from diffusion.train import resolve_device

    device = resolve_device(device)
    configure_backends(device)
    state = load_checkpoint(ckpt, map_location=device)
    require_entries(state, ckpt, ("config", "data", "step", "ema" if use_ema else "model"),
                    " (sample and evaluate rebuild the model from them)")
    try:
        cfg = config_from_checkpoint(state["config"])
        info = state["data"]
        model = build_model(cfg, data_standin(info["channels"], info["image_size"], info["num_classes"])).to(device)
        weights = state["ema"]["module"] if use_ema else state["model"]
        check_weights_fit(model, weights, ckpt, "EMA weights" if use_ema else "weights")
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {ckpt} cannot be rebuilt into a model: "
                              f"{' '.join(str(err).split()) or type(err).__name__}") from None
    return model.eval(), build_diffusion(cfg), cfg, state


# ---------------------------------------------------------------------------------------------------- commands
def _cmd_train(args) -> int:
    from diffusion.config import load_config
    from diffusion.distributed import destroy
    from diffusion.train import Trainer

    cfg = load_config(args.config, args.set or ())
    if args.data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(args.data_root)))
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, total_steps=args.steps))
    compile_mode = {None: None, "off": False, "model": "model", "step": "step"}[args.compile]
    try:
        trainer = Trainer(cfg, out_dir=args.out, device=args.device, resume=args.resume,
                          progress=not args.no_progress, compile=compile_mode,
                          allow_config_change=args.allow_config_change)
        result = trainer.train()
    finally:
        destroy()
    if trainer.is_main:
        print(json.dumps({k: result[k] for k in ("step", "loss", "ema_loss", "wall_time_s", "images_per_s",
                                                   "interrupted", "checkpoint", "out_dir")}))
    if result["interrupted"]:
        import signal

        return 128 + int(getattr(signal, result["interrupted"]))
    return 0


def _fast(model, args):
    """On CUDA, the compiled channels_last network (``diffusion.fast``) unless ``--no-compile``; the
    samplers add bf16 autocast there by themselves."""
    from diffusion.fast import prepare_for_sampling

    if next(model.parameters()).device.type != "cuda" or args.no_compile:
        return model
    print("compiling the network for sampling (torch.compile, once; --no-compile skips it)", file=sys.stderr)
    return prepare_for_sampling(model)


def _cmd_sample(args) -> int:
    import torch

    from diffusion.runs import prepare_output_file
    from diffusion.samplers import sample
    from diffusion.train import save_sample_grid

    prepare_output_file(args.out, "--out", suffixes=(".png",))  # before sampling, not after
    model, diffusion, cfg, state = load_trained(args.ckpt, args.device, use_ema=not args.raw)
    device = next(model.parameters()).device
    model = _fast(model, args)
    num_classes = model.num_classes
    null_class = num_classes if cfg.model.class_cond else None
    labels = None
    if args.classes is not None:
        if null_class is None:
            raise UsageError("--classes needs a class-conditional model; this checkpoint is unconditional")
        bad = [c for c in args.classes if c > num_classes]
        if bad:
            raise UsageError(f"--classes must lie in [0, {num_classes}] ({num_classes} is the null token ∅), "
                             f"got {bad}")
        labels = torch.tensor([args.classes[i % len(args.classes)] for i in range(args.num)], device=device)
    if args.guidance_scale is not None and labels is None:
        raise UsageError("--guidance-scale needs --classes (classifier-free guidance steers towards a class)")
    steps = args.steps
    if steps is not None and steps > diffusion.num_timesteps:
        raise UsageError(f"--steps must lie in [1, {diffusion.num_timesteps}] (T), got {steps}")
    c, s = model.in_channels, model.image_size
    gen = torch.Generator(device=device).manual_seed(args.seed)
    chunks = []
    for lo in range(0, args.num, args.batch_size):
        hi = min(args.num, lo + args.batch_size)
        chunks.append(sample(diffusion, model, (hi - lo, c, s, s), sampler=args.sampler, steps=steps, eta=args.eta,
                             guidance_scale=args.guidance_scale, y=None if labels is None else labels[lo:hi],
                             null_class=null_class, generator=gen, progress=True, device=device).cpu())
    images = torch.cat(chunks)
    nrow = len(args.classes) if args.classes is not None and len(args.classes) <= 16 else None
    png, npz = save_sample_grid(
        images, args.out, labels=labels, nrow=nrow, sampler=args.sampler,
        steps=steps if steps is not None else diffusion.num_timesteps, eta=args.eta,
        guidance_scale=float("nan") if args.guidance_scale is None else args.guidance_scale, seed=args.seed,
        ema=not args.raw, checkpoint_step=int(state["step"]))
    print(f"wrote {png} and {npz}")
    return 0


def _cmd_evaluate(args) -> int:
    import contextlib

    from diffusion.metrics.evaluate import evaluate
    from diffusion.runs import UserError, prepare_output_file

    if args.out is not None:
        prepare_output_file(args.out, "--out")  # before the metrics are computed, not after
    # stdout carries the JSON record and nothing else: whatever the libraries print goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        model, diffusion, cfg, state = load_trained(args.ckpt, args.device)
        device = next(model.parameters()).device
        model = _fast(model, args)
        data_root = args.data_root if args.data_root is not None else cfg.data.root
        result = evaluate(model, diffusion, cfg.data.name, metrics=args.metrics, num_samples=args.num_samples,
                          sampler=args.sampler, steps=args.steps, eta=args.eta, guidance_scale=args.guidance_scale,
                          num_classes=model.num_classes if cfg.model.class_cond else None,
                          batch_size=args.batch_size, bpd_images=args.bpd_images, seed=args.seed, device=device,
                          data_root=data_root, image_size=cfg.data.image_size,
                          allow_download=not args.no_download)
    result = dict(result, checkpoint=str(args.ckpt), checkpoint_step=int(state["step"]))
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)  # printed first: a failing write below cannot lose the results
    if args.out is not None:
        try:
            args.out.write_text(text + "\n")
        except OSError as err:
            raise UserError(f"--out {args.out}: the results could not be written ({err.strerror or err}); "
                            "they were printed on stdout above") from None
    return 0


def _cmd_info(args) -> int:
    from diffusion.config import build_model, load_config
    from diffusion.model_info import count_parameters, describe_unet, flops_per_image

    cfg = load_config(args.config, args.set or ())
    if cfg.data.name not in DATASET_SHAPES:
        raise UsageError(f"data.name must be one of {', '.join(DATASET_SHAPES)} for info, got {cfg.data.name!r}")
    channels, native, classes = DATASET_SHAPES[cfg.data.name]
    standin = data_standin(channels, cfg.data.image_size or native, classes)
    variants = {}
    for cond in (False, True):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, class_cond=cond))
        variants[cond] = build_model(c, standin)
    model = variants[cfg.model.class_cond]
    size, channels = standin.image_size, standin.channels
    rows = describe_unet(model, size, channels)
    print(f"U-Net of {args.config} (dataset {cfg.data.name}: {channels}×{size}×{size}, "
          f"{'class-conditional' if cfg.model.class_cond else 'unconditional'})")
    header = f"{'stage':<22}{'kind':<34}{'res':>5}{'in':>7}{'out':>7}{'parameters':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        res = "" if r["resolution"] is None else str(r["resolution"])
        cin = "" if r["in_channels"] is None else str(r["in_channels"])
        print(f"{r['name']:<22}{r['kind']:<34}{res:>5}{cin:>7}{r['out_channels']:>7}{r['parameters']:>14,}")
    print()
    print(f"parameters without class embedding: {count_parameters(variants[False]):,}")
    k = standin.num_classes
    if k:
        print(f"parameters with class embedding ({k}+1 rows, MLP_y): {count_parameters(variants[True]):,}")
    else:
        print("parameters with class embedding: n/a (the dataset has no classes)")
    if not args.no_flops:
        flops = flops_per_image(model, size, channels)
        print(f"FLOPs per image (one forward pass of ε_θ): {flops:,} ({flops / 1e9:.2f} GFLOPs)")
    return 0


def _cmd_import_diffusers(args) -> int:
    from diffusion.convert import import_diffusers

    print(json.dumps(import_diffusers(args.src, args.out, data=args.data), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion",
        description="Denoising diffusion probabilistic models (the thesis companion): train, sample, "
                    "evaluate, inspect.")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: torch's choice; on small shared VMs 1 can be fastest)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,evaluate,info,import-diffusers}")

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train ε_θ with L_simple (algorithm 1). Ctrl-C/SIGTERM saves a checkpoint; "
                                   "--resume continues exactly. Under torchrun: DistributedDataParallel.")
    p.add_argument("--config", required=True, type=_existing_file, help="YAML config, e.g. configs/mnist5k.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.ch=64 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest readable checkpoint, or start it from step 0 "
                        "when it has none (an earlier attempt's outputs are moved into aborted-<time>/); after a "
                        "stop at any instant this command continues")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept settings that differ from the run's saved config beyond run "
                        "length, logging, checkpoint and sample intervals (recorded in the run's history.jsonl)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default $DDPM_DATA_ROOT, else <repo>/data)")
    p.add_argument("--steps", type=_positive_int, default=None, help="total training steps (train.total_steps)")
    p.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--compile", choices=("off", "model", "step"), default=None,
                   help="torch.compile: off, the model, or the whole step (default: train.compile)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample a PNG grid (and .npz) from a checkpoint",
                       description="Draw samples from a trained model (EMA weights) and save a PNG grid and an "
                                   ".npz (uint8 images, labels, settings) beside it.")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint file or run folder (newest checkpoint)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler (default ddim)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: all T for ancestral; required in spirit for ddim/dpmpp2m)")
    p.add_argument("--eta", type=_float, default=0.0, help="DDIM η (0: deterministic)")
    p.add_argument("--guidance-scale", type=_float, default=None,
                   help="classifier-free guidance scale w (eq. 18); needs --classes")
    p.add_argument("--classes", type=_class_list, default=None,
                   help="class labels, comma-separated (cycled over the samples; grid columns are classes)")
    p.add_argument("--num", type=_positive_int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="noise seed (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="samples per batch (default 256)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG path (the .npz goes beside it)")
    p.add_argument("--device", type=_device, default=None, help="cpu or cuda")
    p.add_argument("--raw", action="store_true", help="use the raw (non-EMA) weights")
    p.add_argument("--no-compile", action="store_true",
                   help="on CUDA, do not torch.compile the network (compiling costs tens of seconds once)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="compute metrics of a checkpoint",
                       description="FID / IS (pytorch-fid Inception weights needed), classifier FD, conditional "
                                   "accuracy, bits/dim, nearest neighbours; writes a JSON.")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint file or run folder")
    p.add_argument("--metrics", default="fid,is,cfd,accuracy,bpd,nn",
                   help="comma-separated subset of fid,is,cfd,accuracy,diversity,bpd,nn (default "
                        "fid,is,cfd,accuracy,bpd,nn; fid/is need pytorch-fid's Inception weights)")
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="generated samples (default 1000)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler (default ddim)")
    p.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--eta", type=_float, default=0.0, help="DDIM η")
    p.add_argument("--guidance-scale", type=_float, default=None, help="guidance scale w (conditional models)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="noise seed")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="samples per batch")
    p.add_argument("--bpd-images", type=_positive_int, default=256, help="held-out images for bits/dim")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default $DDPM_DATA_ROOT)")
    p.add_argument("--device", type=_device, default=None, help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="JSON output path (default: print only)")
    p.add_argument("--no-download", action="store_true",
                   help="never download the Inception weights; without the file in the torch hub cache "
                        "fid/is are recorded as unavailable (an error if only they were asked for)")
    p.add_argument("--no-compile", action="store_true",
                   help="on CUDA, do not torch.compile the network (compiling costs tens of seconds once)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("info", help="print the U-Net of a config: stages, parameters, FLOPs",
                       description="Architecture by stage, total parameter count without and with the class "
                                   "embedding, and FLOPs per image of the config's U-Net.")
    p.add_argument("--config", required=True, type=_existing_file, help="YAML config, e.g. configs/cifar10.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("import-diffusers", help="convert a diffusers UNet2DModel (DDPM's layout) into a checkpoint",
                       description="Convert a published DDPM checkpoint in diffusers' format (a local folder with "
                                   "config.json + weights, or a hub id such as google/ddpm-cifar10-32 when online) "
                                   "into a checkpoint that sample/evaluate accept (diffusion.convert).")
    p.add_argument("src", help="folder with config.json and the weights, or a hub id")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write, e.g. ddpm-cifar10-32.pt")
    p.add_argument("--data", default=None,
                   help="dataset evaluate compares with (default: cifar10 for 3×32×32, celeba64 for 3×64×64)")
    p.set_defaults(func=_cmd_import_diffusers)

    debug_help = "on failure, print the traceback too (also DDPM_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for p in sub.choices.values():  # accepted after the command as well
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status: 2 for a failure the user can fix (one paragraph on
    stderr, ``diffusion.runs.describe_failure``; the traceback only with ``--debug`` or ``DDPM_DEBUG=1``),
    1 for a non-finite loss, 130 for Ctrl-C (at start-up too)."""
    import os
    import traceback
    import warnings

    from diffusion.runs import deferred_interrupt, describe_failure, format_warning, settle_interrupt

    debug = os.environ.get("DDPM_DEBUG", "") not in ("", "0")
    with deferred_interrupt() as interrupt:  # torch's start-up cannot be interrupted safely
        parser = build_parser()
        args = parser.parse_args(argv)  # --help and argument errors leave here, before torch is loaded
        import numpy  # noqa: F401
        import torch  # noqa: F401
    if interrupt.requested:
        print("python -m diffusion: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    debug = debug or bool(getattr(args, "debug", False))
    prefix = f"{parser.prog} {args.command}"
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = format_warning
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except KeyboardInterrupt:
        settle_interrupt()  # else an interrupt caught inside an exec'd string ends the process by SIGINT
        if debug:
            traceback.print_exc()
        print(f"{prefix}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as err:
        described = describe_failure(err)
        if described is None:  # not the user's mistake: a bug, with its traceback
            raise
        if debug:
            traceback.print_exc()
        message, status = described
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return status
    finally:
        warnings.formatwarning = formatwarning
