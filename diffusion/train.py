"""Training of ε_θ with L_simple (algorithm 1, eq. 14): the trainer's loop, its run folder, logs, stage
samples and checkpoints, and multi-GPU training (DistributedDataParallel).

The per-step work is ``diffusion.train_step`` (one optimiser step and its running statistics, the
learning-rate warm-up); what a checkpoint holds and how a run resumes from one is ``diffusion.train_state``; a
clean stop on SIGINT/SIGTERM is ``diffusion.stop_signals``. :class:`Trainer` ties them together: it sets up the
model, EMA, optimiser and data order from the configuration, runs the steps, logs every ``log_every`` steps,
samples at the ``sample_every`` steps, and writes checkpoints.

Fast path on CUDA: bf16 autocast, channels_last, fused Adam, ``torch._foreach`` EMA, optional
``torch.compile`` of the model (``compile="model"``) or of the whole step (``compile="step"``).
On CPU the run is seeded and deterministic; a run interrupted at step k and resumed from its checkpoint
gives the same losses step for step as one that was not interrupted.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion import distributed
from diffusion.checkpoint import checkpoint_path, latest_checkpoint, load_newest_readable, save_checkpoint
from diffusion.config import build_diffusion, build_model, config_to_dict
from diffusion.data import InfiniteBatches, load_dataset
from diffusion.ema import EMA
from diffusion.fast import configure_backends
from diffusion.progress import tqdm
from diffusion.report import image_grid
from diffusion.runs import RunFolder
from diffusion.samplers import SAMPLERS, sample
from diffusion.stop_signals import StopSignals
from diffusion.train_state import REQUIRED, checkpoint_state, restore
from diffusion.train_step import COMPILE_MODES, TrainStats, make_train_step, set_lr, warmup_lr

__all__ = ["NonFiniteLossError", "Trainer", "resolve_device", "save_sample_grid", "train"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""

    exit_status = 1  # the command line's exit status


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → CUDA when available, else CPU; otherwise the named device (``cpu``, ``cuda``, ``cuda:1``)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def save_sample_grid(images: torch.Tensor, path: str | os.PathLike, labels: torch.Tensor | None = None,
                     nrow: int | None = None, **meta) -> tuple[Path, Path]:
    """Save images in [-1, 1] (N, C, H, W) as a PNG grid at ``path`` and, beside it, an ``.npz`` with
    ``images`` (uint8 N×C×H×W), ``labels`` (or −1) and the scalar metadata ``meta``. Returns both paths."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = image_grid(images, nrow=nrow)
    pixels = (grid * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    as_uint8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    lab = labels.detach().cpu().numpy() if labels is not None else np.full(n, -1, dtype=np.int64)
    npz = path.with_suffix(".npz")
    np.savez_compressed(npz, images=as_uint8, labels=lab, **{k: np.asarray(v) for k, v in meta.items()})
    return path, npz


class Trainer:
    """Trains ``build_model(cfg, data)`` on ``data`` with the settings of ``cfg.train`` and writes to the run
    folder ``out_dir``, a ``diffusion.runs.RunFolder`` locked from construction to the end of :meth:`train`
    (and again by every later :meth:`train` call; a second process gets ``RunLockedError`` naming the holder):

    - ``metrics.jsonl``: every ``log_every`` steps one JSON line with ``step``, ``loss`` (mean L_simple
      over the interval), ``ema_loss`` (exponential moving average of the per-step loss, factor 0.99),
      ``lr``, ``grad_norm`` (mean, before clipping), ``images_per_s``, ``elapsed_s``;
    - ``checkpoints/ckpt_<step>.pt`` every ``ckpt_every`` steps, also once ``ckpt_every_minutes`` of wall
      time passed since the last one (when set), at the end and on SIGINT/SIGTERM (the last ``keep_last``
      kept); writing one changes nothing that is trained;
    - ``samples/step_<step>.png`` and ``.npz`` at the steps listed in ``sample_every``: ``sample_num``
      images from the EMA weights with fixed noise (seed ``cfg.train.seed``), sampler ``sample_sampler``
      with ``sample_steps`` steps; class-conditional models get labels 0, 1, …, K−1, 0, 1, …;
    - ``config.json``, ``history.jsonl`` (one line per start), ``run.lock``, ``checkpoints/damaged/``,
      ``aborted-<time>/``: see ``RunFolder``.

    A resumed run compares the full saved configuration with ``cfg``: ``model.*``/``diffusion.*`` must match,
    other keys outside ``diffusion.runs.RESUME_ALLOWED`` only with ``allow_config_change``. After a kill at
    any instant ``resume=True`` continues, and on the CPU ends with the weights of an uninterrupted run.

    Args:
        cfg: a ``diffusion.config.Config``.
        data: an ``ImageData``; default ``load_dataset(cfg.data.name, "train", cfg.data.root, image_size=cfg.data.image_size)``.
        out_dir: run folder (default ``runs/<cfg.name>``).
        device: ``"cpu"``, ``"cuda"``…; default CUDA when available (under torchrun: ``cuda:<LOCAL_RANK>``).
        resume: ``False`` (a fresh run: a folder holding an earlier run's checkpoints or outputs is refused),
            ``True`` (``--resume``: continue from the newest readable checkpoint, damaged newer ones skipped with
            a warning and kept in ``checkpoints/damaged/``; without one, start from step 0, the outputs of an
            earlier attempt moved into ``aborted-<time>/``) or ``"auto"`` (the same, without the note that a
            folder without outputs starts from step 0); see ``RunFolder.choose_start``.
        allow_config_change: accept resuming with changed settings outside ``RESUME_ALLOWED`` (not the model
            or diffusion); the new values are used and recorded in ``history.jsonl``.
        progress: show the tqdm bar (rank 0 only).
        compile: overrides ``cfg.train.compile``: ``False``, ``True``/``"model"`` (compile the model),
            ``"step"`` (compile the loss computation and the update, see ``make_train_step``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel; each rank trains
    on its own slice of every global batch with its own noise seed, the per-rank batch is
    ``batch_size / world_size`` (which must divide); rank 0 owns the run folder: it alone locks it, logs,
    samples and writes checkpoints.
    """

    def __init__(self, cfg, data=None, out_dir: str | os.PathLike | None = None, device=None,
                 resume: bool | str = False, *, progress: bool = True, sample_num: int = 64,
                 sample_sampler: str = "ddim", sample_steps: int = 50, compile: bool | str | None = None,
                 allow_config_change: bool = False):
        if resume not in (False, True, "auto"):
            raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
        if cfg.model.kind != "unet":
            raise ValueError(f"model.kind must be 'unet' for the image trainer, got {cfg.model.kind!r} (the 2-D toy "
                             "model is trained by diffusion.experiments.train_toy)")
        tc = cfg.train
        self.cfg = cfg
        self.dist = distributed.init_from_env()
        self.is_main = self.dist.rank == 0
        if device is None and self.dist.world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{self.dist.local_rank}"
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        configure_backends(self.device)  # cuDNN autotuning and TF32 on CUDA
        world = self.dist.world_size
        if tc.batch_size % (world * tc.grad_accum):
            raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by world_size × grad_accum "
                             f"= {world} × {tc.grad_accum}")
        self.local_batch = tc.batch_size // world
        self.progress = progress
        if sample_sampler not in SAMPLERS:  # checked now, not at the first sample_every step
            raise ValueError(f"sample_sampler must be one of {SAMPLERS}, got {sample_sampler!r}")
        self.sample_num, self.sample_sampler, self.sample_steps = int(sample_num), sample_sampler, int(sample_steps)
        compile = tc.compile if compile is None else compile
        # True compiles the model: on an H200 (CIFAR-10 U-Net, batch 128, bf16) it beat compiling the whole
        # step (2,458 vs 2,246 images/s) and compiles in a third of the time.
        self.compile = "model" if compile is True else compile
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES} or True, got {compile!r}")
        cuda = self.device.type == "cuda"
        if self.compile and not cuda:  # the fast path is a CUDA path; compiling on a CPU costs minutes
            warnings.warn(f"train.compile={self.compile!r} is ignored on {self.device.type}", stacklevel=2)
            self.compile = False
        self.allow_config_change = bool(allow_config_change)
        self.folder = RunFolder(out_dir if out_dir is not None else Path("runs") / cfg.name, owner=self.is_main)
        self.out_dir, self.ckpt_dir = self.folder.path, self.folder.checkpoints
        self.metrics_path = self.folder.metrics
        self.folder.acquire()
        try:
            self._setup(data, resume)
        except BaseException:
            self.folder.release()
            raise

    def _setup(self, data, resume) -> None:
        cfg, tc, world = self.cfg, self.cfg.train, self.dist.world_size
        cuda = self.device.type == "cuda"
        existing = self.folder.choose_start(resume)  # the folder is checked before the data are loaded
        # Model initialisation is identical on every rank; the training randomness differs per rank.
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed)
        self.data = data if data is not None else load_dataset(cfg.data.name, "train", root=cfg.data.root, image_size=cfg.data.image_size)
        self.model = build_model(cfg, self.data).to(self.device)
        self.channels_last = bool(tc.channels_last and cuda)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion = build_diffusion(cfg)
        self.null_class = self.model.num_classes if cfg.model.class_cond else None
        self.ema = EMA(self.model, tc.ema_decay, warmup=tc.ema_warmup)
        lr = torch.tensor(float(tc.lr), device=self.device) if self.compile == "step" else float(tc.lr)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=tuple(tc.adam_betas),
                                          fused=True if cuda else None)
        if world > 1:
            torch.manual_seed(tc.seed + self.dist.rank)
        # The same data seed on every rank: each takes its own slice of one global permutation.
        data_gen = torch.Generator().manual_seed(tc.seed)
        self.batches = InfiniteBatches(self.data, self.local_batch, self.device, data_gen, cfg.data.hflip,
                                       rank=self.dist.rank, world_size=world)
        self._batch_iter = iter(self.batches)
        self.stats = TrainStats(self.device)
        self.step = 0
        self.elapsed_s = 0.0
        self.last_checkpoint: Path | None = None
        if existing is not None:
            self._load()
        self.folder.truncate_metrics(self.step)

        net = self.model
        if world > 1:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if cuda else None)
        if self.compile == "model":
            net = torch.compile(net)
        self.net = net
        self.train_step = make_train_step(
            net, self.diffusion, self.optimizer, self.ema, grad_clip=tc.grad_clip, p_uncond=tc.p_uncond,
            null_class=self.null_class, grad_accum=tc.grad_accum, bf16=bool(tc.bf16 and cuda), stats=self.stats,
            compile="step" if self.compile == "step" else False)
        self.signals = StopSignals()

    def close(self) -> None:
        """Release the run folder's lock now (it is released at the end of :meth:`train` anyway)."""
        self.folder.release()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The checkpoint payload (``diffusion.train_state.checkpoint_state``; collective under DDP)."""
        return checkpoint_state(self)

    def save(self) -> Path | None:
        """Write ``checkpoints/ckpt_<step>.pt`` (rank 0) after checking that no step so far had a
        non-finite loss. Returns the path on rank 0."""
        self._check_finite(self.stats.first_bad)
        state = self.state_dict()
        path = None
        if self.is_main:
            path = save_checkpoint(state, checkpoint_path(self.ckpt_dir, self.step), keep_last=self.cfg.train.keep_last)
            self.last_checkpoint = path
        distributed.barrier()
        return path

    def _load(self) -> None:
        """Resume from the newest readable checkpoint of ``ckpt_dir`` (``diffusion.train_state.restore``; damaged
        newer ones are set aside)."""
        state, path, skipped = load_newest_readable(self.ckpt_dir, map_location="cpu", required=REQUIRED)
        skipped = [bad for bad, _ in skipped]
        self.folder.set_aside_damaged(skipped)
        changes = restore(self, state, path)
        self.folder.resumed(path, changes, skipped)
        self.last_checkpoint = path

    # ------------------------------------------------------------------ faults
    def _check_finite(self, first_bad: torch.Tensor | int | None) -> None:
        if isinstance(first_bad, torch.Tensor):
            bad = distributed.all_reduce_min(
                torch.where(first_bad < 0, torch.full_like(first_bad, float("inf")), first_bad)).item()
            first_bad = None if math.isinf(bad) else int(bad)
        if first_bad is not None:
            last = self.last_checkpoint or latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLossError(
                f"non-finite training loss at step {first_bad + 1} (update {first_bad + 1} of the run); "
                f"stopped. The last good checkpoint is {last if last else 'none (no checkpoint was written)'}; "
                "try a lower learning rate or stronger gradient clipping")

    # ------------------------------------------------------------------ logging and samples
    def _log(self, pbar, lr: float, images: int, seconds: float) -> dict:
        values = self.stats.read(reduce=self.dist.world_size > 1)
        self._check_finite(values["first_nonfinite_step"])
        record = {"step": self.step, "loss": values["loss"], "ema_loss": values["ema_loss"], "lr": lr,
                  "grad_norm": values["grad_norm"], "images_per_s": images / seconds if seconds > 0 else None,
                  "elapsed_s": round(self.elapsed_s, 3)}
        self.folder.log(record)
        if self.is_main:
            pbar.set_postfix(loss=f"{record['loss']:.4f}", ema=f"{record['ema_loss']:.4f}",
                             img_s=f"{record['images_per_s'] or 0:.0f}", refresh=False)
        return record

    @torch.no_grad()
    def sample_images(self, num: int | None = None, sampler: str | None = None, steps: int | None = None,
                      seed: int | None = None, use_ema: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples in [-1, 1] from the EMA (or raw) weights with fixed noise; conditional models get labels
        0..K−1 cycled. Training randomness is left untouched."""
        num = self.sample_num if num is None else num
        model = self.ema.module if use_ema else self.model
        c, s = self.model.in_channels, self.model.image_size
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed if seed is None else seed)
        y = None
        if self.null_class is not None:
            y = torch.arange(num, device=self.device) % self.null_class
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            x = sample(self.diffusion, model, (num, c, s, s), sampler=sampler or self.sample_sampler,
                       steps=steps or self.sample_steps, y=y, null_class=self.null_class, generator=gen,
                       device=self.device)
        return x, y

    def _sample_grid(self) -> tuple[Path, Path]:
        x, y = self.sample_images()
        nrow = self.null_class if self.null_class is not None and self.null_class <= 16 else None
        return save_sample_grid(x, self.out_dir / "samples" / f"step_{self.step:06d}.png", labels=y, nrow=nrow,
                                step=self.step, sampler=self.sample_sampler, steps=self.sample_steps, ema=True)

    # ------------------------------------------------------------------ the loop
    def train(self, total_steps: int | None = None) -> dict:
        """Train until ``total_steps`` (default ``cfg.train.total_steps``) or a SIGINT/SIGTERM.

        Returns ``step``, ``loss`` and ``ema_loss`` (last logged), ``wall_time_s`` (this call),
        ``elapsed_s`` (all sessions of the run), ``images_per_s`` (mean over this call),
        ``interrupted`` (signal name or ``None``), ``out_dir``, ``checkpoint``, ``metrics``, ``samples``.
        Raises ``NonFiniteLossError`` if the loss becomes NaN/inf (no checkpoint is written after it).
        """
        tc = self.cfg.train
        total = int(tc.total_steps if total_steps is None else total_steps)
        if total < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.folder.acquire()  # held already after construction; taken again by a later call
        try:
            return self._train(total)
        finally:
            self.folder.release()

    def _train(self, total: int) -> dict:
        tc = self.cfg.train
        sample_at = {int(s) for s in tc.sample_every}
        self.folder.begin(self.step, total, config_to_dict(self.cfg))
        samples, last = [], {"loss": None, "ema_loss": None}
        start_step, wall0 = self.step, time.perf_counter()
        mark_time, mark_step, paused, last_save = wall0, self.step, 0.0, wall0
        deterministic = self.device.type == "cpu"
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        pbar = tqdm(total=total, initial=self.step, disable=not (self.progress and self.is_main),
                    desc=f"train {self.cfg.name}", unit="step", dynamic_ncols=True)
        self.model.train()
        try:
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            with self.signals.installed():
                while self.step < total:
                    lr = warmup_lr(self.step, tc.lr, tc.warmup_steps)
                    set_lr(self.optimizer, lr)
                    x, y = next(self._batch_iter)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    self.train_step(x, y)
                    self.step += 1
                    pbar.update(1)
                    stop = self.signals.requested(self.step, tc.log_every, self.dist.world_size, self.device)
                    if self.step % tc.log_every == 0 or self.step == total or stop:
                        now = time.perf_counter()
                        self.elapsed_s += now - mark_time
                        last = self._log(pbar, lr, (self.step - mark_step) * tc.batch_size,
                                         now - mark_time - paused)
                        mark_time, mark_step, paused = now, self.step, 0.0
                    if self.step in sample_at and self.is_main:
                        t0 = time.perf_counter()
                        samples.extend(self._sample_grid())
                        paused += time.perf_counter() - t0
                    if self._checkpoint_due(total, stop, last_save):
                        t0 = time.perf_counter()
                        self.save()
                        last_save = time.perf_counter()
                        paused += last_save - t0
                    if stop:
                        break
        finally:
            pbar.close()
            if deterministic:
                torch.use_deterministic_algorithms(was_deterministic)
        wall = time.perf_counter() - wall0
        interrupted = self.signals.name
        if interrupted and self.is_main:
            tqdm.write(f"{interrupted}: stopped at step {self.step}; checkpoint {self.last_checkpoint}; "
                       "continue with --resume", file=sys.stderr)
        return {
            "step": self.step, "loss": last["loss"], "ema_loss": last["ema_loss"], "wall_time_s": wall,
            "elapsed_s": self.elapsed_s,
            "images_per_s": (self.step - start_step) * tc.batch_size / wall if wall > 0 else None,
            "interrupted": interrupted, "out_dir": str(self.out_dir),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "metrics": str(self.metrics_path), "samples": [str(p) for p in samples],
        }

    def _checkpoint_due(self, total: int, stop: bool, last_save: float) -> bool:
        """Whether this step ends with a checkpoint: every ``ckpt_every`` steps, at the end, on a stop signal,
        and once ``ckpt_every_minutes`` of wall time passed since ``last_save`` (under DDP the ranks agree on
        that every ``log_every`` steps, by one collective)."""
        tc = self.cfg.train
        if stop or self.step % tc.ckpt_every == 0 or self.step == total:
            return True
        if tc.ckpt_every_minutes is None:
            return False
        late = time.perf_counter() - last_save >= 60.0 * tc.ckpt_every_minutes
        if self.dist.world_size == 1:
            return late
        if self.step % tc.log_every:
            return False
        return bool(distributed.all_reduce_max(torch.tensor(float(late), device=self.device)).item())


def train(cfg, data=None, out_dir: str | os.PathLike | None = None, device=None, resume: bool | str = False,
          total_steps: int | None = None, **trainer_kwargs) -> dict:
    """Build a :class:`Trainer` and run it; returns its result dict (see ``Trainer.train``)."""
    return Trainer(cfg, data=data, out_dir=out_dir, device=device, resume=resume, **trainer_kwargs).train(total_steps)
