"""The training loop's helpers, written out: the device names it accepts, the warm-up of the learning
rate, setting it (plain and tensor), and the running statistics (interval means, the bias-corrected EMA
of the loss, the first non-finite step, reset on read, state round trip), and the sample grids: the PNG and
its ``.npz`` written out pixel by pixel, and the trainer's samples compared with direct sampler calls; the
``train`` function; every argument check of the trainer and its step with its whole message; the training
step against algorithm 1 written out; the loop's timing, logs, result and messages on a controlled clock."""
import json
import math
import re
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import diffusion.stop_signals
import diffusion.train
from diffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffusion.config import build_diffusion, build_model, config_from_dict, config_to_dict
from diffusion.data import ImageData
from diffusion.samplers import sample
from diffusion.train import NonFiniteLossError, Trainer, resolve_device, save_sample_grid, train
from diffusion.train_step import TrainStats, make_train_step, set_lr, warmup_lr
from tests.messages import exact
from tests.test_train import read_metrics, tiny_cfg, tiny_data


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'$"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 'meta'$"):
        resolve_device("meta")
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:<index>', got 3.5$"):
        resolve_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device 'cuda' was requested but no CUDA GPU is available; "
                                             r"use device='cpu'$"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("step, expected", [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (4, 1.0), (50, 1.0)])
def test_warmup_is_linear_then_constant(step, expected):
    assert warmup_lr(step, 2e-4, 4) == pytest.approx(2e-4 * expected, rel=1e-12)
    assert isinstance(warmup_lr(step, 2, 4), float)


@pytest.mark.parametrize("warmup", [0, -3])
def test_no_warmup_is_the_base_rate(warmup):
    assert warmup_lr(0, 3, warmup) == 3.0 and isinstance(warmup_lr(0, 3, warmup), float)


def test_set_lr_plain_and_tensor_groups():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": torch.tensor(0.5)}], lr=0.1)
    lr_tensor = opt.param_groups[1]["lr"]
    set_lr(opt, 0.02)
    assert opt.param_groups[0]["lr"] == 0.02
    assert opt.param_groups[1]["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(0.02)  # filled in place


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, 1.5])
def test_stats_beta_outside_zero_one_is_named(beta):
    with pytest.raises(ValueError, match=rf"^beta must be in \(0, 1\), got {beta!r}$"):
        TrainStats(torch.device("cpu"), beta=beta)


def test_stats_means_ema_first_bad_step_and_reset():
    stats = TrainStats(torch.device("cpu"), beta=0.5)
    losses, norms = [4.0, 2.0, float("nan"), 1.0, float("inf")], [1.0, 3.0, 5.0, 7.0, 9.0]
    for loss, norm in zip(losses[:2], norms[:2]):
        stats.update(torch.tensor(loss, dtype=torch.float64), torch.tensor(norm))
    out = stats.read()
    # EMA with bias correction: (β(1−β)ℓ1 + (1−β)ℓ2) / (β(1−β) + (1−β)) = (0.25·4 + 0.5·2) / 0.75
    assert out == {"loss": 3.0, "grad_norm": 2.0, "ema_loss": pytest.approx(2.0 / 0.75, rel=1e-6),
                   "first_nonfinite_step": None}
    empty = stats.read()  # the interval sums were reset, the EMA was not
    assert math.isnan(empty["loss"]) and math.isnan(empty["grad_norm"])
    assert empty["ema_loss"] == pytest.approx(2.0 / 0.75, rel=1e-6)
    state = stats.state_dict()
    for loss, norm in zip(losses[2:], norms[2:]):
        stats.update(torch.tensor(loss), torch.tensor(norm))
    out = stats.read()
    assert out["first_nonfinite_step"] == 2 and out["grad_norm"] == 7.0 and math.isnan(out["loss"])
    fresh = TrainStats(torch.device("cpu"), beta=0.5)
    fresh.load_state_dict(state)
    assert fresh.read()["ema_loss"] == pytest.approx(2.0 / 0.75, rel=1e-6)
    assert set(state) == {"loss_sum", "grad_norm_sum", "count", "ema_num", "ema_den", "steps_done", "first_bad"}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())


def test_stats_keep_the_first_of_several_bad_steps():
    stats = TrainStats(torch.device("cpu"))
    for loss in (1.0, float("inf"), 2.0, float("nan")):
        stats.update(torch.tensor(loss), torch.tensor(1.0))
    assert stats.read()["first_nonfinite_step"] == 1


# ---------------------------------------------------------------- sample grids

def test_save_sample_grid_writes_the_pixels_and_the_npz(tmp_path):
    """Five RGB 2×2 images in a grid of ceil(√5) = 3 columns with a one-pixel white border: each pixel is
    round(255·(x + 1)/2) of the clamped value; the ``.npz`` holds the uint8 images, −1 labels and the metadata."""
    levels = torch.tensor([-1.0, -0.5, 0.0, 0.3, 0.6, 1.0, 1.7, -2.0])  # 0.6: 204 (255 levels), not 205
    x = levels[torch.arange(5 * 3 * 2 * 2) % 8].reshape(5, 3, 2, 2)
    path = tmp_path / "a" / "b" / "grid.png"
    written = save_sample_grid(x, path, step=7, sampler="ddim")
    assert written == (path, tmp_path / "a" / "b" / "grid.npz")
    png = np.asarray(Image.open(path))
    assert Image.open(path).mode == "RGB" and png.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    expected = np.full((7, 10, 3), 255, dtype=np.uint8)
    for i in range(5):
        r, c = divmod(i, 3)
        value = np.round((x[i].clamp(-1, 1).permute(1, 2, 0).numpy().astype(np.float64) + 1) / 2 * 255)
        expected[1 + 3 * r:3 + 3 * r, 1 + 3 * c:3 + 3 * c] = value.astype(np.uint8)
    np.testing.assert_array_equal(png, expected)
    assert {0, 128, 204, 255} <= set(png.flatten().tolist())
    with np.load(written[1]) as npz:
        assert sorted(npz.files) == ["images", "labels", "sampler", "step"]
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (5, 3, 2, 2)
        np.testing.assert_array_equal(npz["images"], np.round((x.clamp(-1, 1).numpy() + 1) * 127.5))
        assert npz["labels"].tolist() == [-1] * 5 and int(npz["step"]) == 7 and str(npz["sampler"]) == "ddim"


def test_save_sample_grid_grey_single_image_labels_and_bad_path(tmp_path):
    x = torch.tensor([[[[-1.0, 1.0], [0.0, -1.0]]]])
    path, npz_path = save_sample_grid(x, tmp_path / "one.png", labels=torch.tensor([4]))
    assert Image.open(path).mode == "L"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[255, 255, 255, 255], [255, 0, 255, 255],
                                                                  [255, 128, 0, 255], [255, 255, 255, 255]])
    with np.load(npz_path) as npz:
        assert npz["labels"].tolist() == [4]
    _, npz_path = save_sample_grid(torch.zeros(4, 1, 2, 2), tmp_path / "row.png", nrow=4)
    assert np.asarray(Image.open(tmp_path / "row.png")).shape == (4, 13)
    bad = tmp_path / "grid.jpg"
    with pytest.raises(ValueError, match="^" + re.escape(f"path must end in .png, got {str(bad)!r}") + "$"):
        save_sample_grid(x, bad)


def _trainer(tmp_path, class_cond=True, num_classes=3, **kw):
    """The tiny trainer of test_train.py (or one with ``num_classes`` classes) with raw weights moved away
    from the EMA copy, and the zero-initialised output head made non-zero."""
    raw = config_to_dict(tiny_cfg())
    raw["model"]["class_cond"] = class_cond
    g = torch.Generator().manual_seed(1)
    data = tiny_data() if num_classes == 3 else ImageData(
        images=torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g),
        labels=torch.arange(40) % num_classes, num_classes=num_classes,
        class_names=tuple(str(i) for i in range(num_classes)), label="tiny", name="tiny")
    tr = Trainer(config_from_dict(raw), data=data, out_dir=tmp_path, device="cpu", progress=False, **kw)
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return tr


def test_trainer_samples_are_the_samplers_with_ema_or_raw_weights(tmp_path):
    tr = _trainer(tmp_path, sample_num=5, sample_sampler="ddim", sample_steps=2)
    rng = torch.get_rng_state()
    x, y = tr.sample_images()
    assert torch.equal(torch.get_rng_state(), rng)  # training randomness untouched
    assert y.tolist() == [0, 1, 2, 0, 1]

    def direct(model, num, sampler, steps, seed):
        return sample(tr.diffusion, model, (num, 1, 8, 8), sampler=sampler, steps=steps, y=torch.arange(num) % 3,
                      null_class=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(x, direct(tr.ema.module, 5, "ddim", 2, 0))
    raw, _ = tr.sample_images(num=3, sampler="ancestral", steps=4, seed=9, use_ema=False)
    assert torch.equal(raw, direct(tr.model, 3, "ancestral", 4, 9))
    assert not torch.equal(raw, direct(tr.ema.module, 3, "ancestral", 4, 9))
    tr.close()


def test_unconditional_trainer_samples_without_labels(tmp_path):
    tr = _trainer(tmp_path, class_cond=False, sample_num=2, sample_steps=3)
    x, y = tr.sample_images()
    assert y is None
    assert torch.equal(x, sample(tr.diffusion, tr.ema.module, (2, 1, 8, 8), sampler="ddim", steps=3,
                                 generator=torch.Generator().manual_seed(0)))
    tr.close()


@pytest.mark.parametrize("num_classes, columns", [(3, 3), (16, 16), (17, 5)])
def test_stage_grid_has_a_column_per_class_up_to_sixteen(tmp_path, num_classes, columns):
    tr = _trainer(tmp_path, num_classes=num_classes, sample_num=17, sample_sampler="ddim", sample_steps=1)
    tr.step = 12
    png, npz_path = tr._sample_grid()
    assert png == tmp_path / "samples" / "step_000012.png"
    assert np.asarray(Image.open(png)).shape == (math.ceil(17 / columns) * 9 + 1, columns * 9 + 1)
    with np.load(npz_path) as npz:
        assert (int(npz["step"]), str(npz["sampler"]), int(npz["steps"]), bool(npz["ema"])) == (12, "ddim", 1, True)
        assert npz["labels"].tolist() == [i % num_classes for i in range(17)]
    tr.close()


def test_train_function_is_a_trainer_run(tmp_path):
    """``train(cfg, …)`` builds a Trainer with the given arguments and runs it to ``total_steps``."""
    result = train(tiny_cfg(sample_every=[2]), data=tiny_data(), out_dir=tmp_path / "f", device="cpu",
                   total_steps=2, progress=False, sample_num=2, sample_steps=2)
    trainer = Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "t", device="cpu", progress=False)
    reference = trainer.train(total_steps=2)
    assert result["step"] == 2 and result["out_dir"] == str(tmp_path / "f")
    assert (result["loss"], result["ema_loss"]) == (reference["loss"], reference["ema_loss"])
    with np.load(result["samples"][1]) as npz:  # the trainer's keyword arguments reach it
        assert npz["images"].shape[0] == 2
    resumed = train(tiny_cfg(sample_every=[2]), data=tiny_data(), out_dir=tmp_path / "f", device="cpu", resume=True,
                    total_steps=3, progress=False)
    assert resumed["step"] == 3
    with pytest.raises(ValueError, match=exact("device must be 'cpu', 'cuda' or 'cuda:<index>', got 'meta'")):
        train(tiny_cfg(), data=tiny_data(), out_dir=tmp_path / "d", device="meta", total_steps=1, progress=False)
    assert not (tmp_path / "d").exists()  # the device is checked before anything is written


# ---------------------------------------------------------------- argument checks, whole messages

def _step_parts():
    model = torch.nn.Linear(1, 1)
    return model, build_diffusion(tiny_cfg()), torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("kw, message", [
    (dict(compile="graph"), "compile must be one of (False, 'model', 'step'), got 'graph'"),
    (dict(compile=True), "compile must be one of (False, 'model', 'step'), got True"),
    (dict(grad_accum=0), "grad_accum must be a positive integer, got 0"),
    (dict(grad_accum=2.0), "grad_accum must be a positive integer, got 2.0"),
    (dict(p_uncond=1.0), "p_uncond must be in [0, 1), got 1.0"),
    (dict(p_uncond=-0.01), "p_uncond must be in [0, 1), got -0.01"),
    (dict(grad_clip=0.0), "grad_clip must be positive or None, got 0.0"),
    (dict(grad_clip=-1), "grad_clip must be positive or None, got -1"),
])
def test_train_step_arguments_are_named(kw, message):
    model, diffusion, optimizer = _step_parts()
    with pytest.raises(ValueError, match=exact(message)):
        make_train_step(model, diffusion, optimizer, None, **kw)


def test_train_step_batch_checks_are_named(tmp_path):
    tr = _trainer(tmp_path)
    step = make_train_step(tr.model, tr.diffusion, tr.optimizer, None, grad_accum=4, null_class=3, p_uncond=0.0,
                           grad_clip=None)
    x = torch.zeros(6, 1, 8, 8)
    with pytest.raises(ValueError, match=exact("the batch of 6 images does not split into grad_accum=4 equal "
                                               "micro-batches")):
        step(x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=exact("y (class labels) is required for a class-conditional model")):
        step(torch.zeros(8, 1, 8, 8))
    assert torch.isfinite(step(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)))
    tr.close()


def test_trainer_arguments_are_named(tmp_path):
    data = tiny_data()
    cases = [
        (dict(resume="yes"), ValueError, "resume must be False, True or 'auto', got 'yes'"),
        (dict(sample_sampler="euler"), ValueError,
         "sample_sampler must be one of ('ancestral', 'ddim', 'dpmpp2m'), got 'euler'"),
        (dict(compile="graph"), ValueError, "compile must be one of (False, 'model', 'step') or True, got 'graph'"),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=exact(message)):
            Trainer(tiny_cfg(), data=data, out_dir=tmp_path, device="cpu", progress=False, **kw)
    with pytest.raises(ValueError, match=exact("train.batch_size=8 must be divisible by world_size × grad_accum "
                                               "= 1 × 3")):
        Trainer(tiny_cfg(grad_accum=3), data=data, out_dir=tmp_path, device="cpu", progress=False)
    toy = config_to_dict(tiny_cfg())
    toy["model"] = {"kind": "mlp", "class_cond": False}
    toy["data"] = {"name": "toy:swiss_roll"}
    with pytest.raises(ValueError, match=exact("model.kind must be 'unet' for the image trainer, got 'mlp' (the 2-D "
                                               "toy model is trained by diffusion.experiments.train_toy)")):
        Trainer(config_from_dict(toy), data=data, out_dir=tmp_path, device="cpu", progress=False)
    with pytest.warns(UserWarning, match=exact("train.compile='model' is ignored on cpu")):
        tr = Trainer(tiny_cfg(), data=data, out_dir=tmp_path, device="cpu", progress=False, compile=True)
    assert tr.compile is False
    with pytest.raises(ValueError, match=exact("total_steps must be a positive integer, got 0")):
        tr.train(total_steps=0)
    tr.close()


def test_fresh_run_refuses_an_earlier_runs_outputs(tmp_path):
    Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False).train(total_steps=1)
    with pytest.raises(ValueError, match=exact(f"out_dir {tmp_path} already holds checkpoints (ckpt_0000001.pt); pass "
                                               "resume=True (--resume) to continue that run or choose another "
                                               "out_dir")):
        Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)
    for ckpt in (tmp_path / "checkpoints").iterdir():
        ckpt.unlink()
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=exact(
            f"out_dir {tmp_path} holds the outputs of an earlier run that has no usable checkpoint (metrics.jsonl, "
            "config.json, history.jsonl, samples/); a fresh run neither mixes with them nor deletes them. Continue "
            f"with --resume (resume=True), which moves them into {tmp_path}/aborted-<time>/ and starts that run "
            "again from step 0, or choose another out_dir (--out)")):
        Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)


def test_nonfinite_loss_before_any_checkpoint_is_named(tmp_path):
    tr = Trainer(tiny_cfg(total_steps=4, log_every=2, ckpt_every=4), data=tiny_data(), out_dir=tmp_path, device="cpu",
                 progress=False)
    real = tr.diffusion.training_losses
    tr.diffusion.training_losses = lambda *a, **kw: (lambda out: dict(out, loss=out["loss"] * float("inf")))(
        real(*a, **kw))
    with pytest.raises(NonFiniteLossError, match=exact(
            "non-finite training loss at step 1 (update 1 of the run); stopped. The last good checkpoint is none (no "
            "checkpoint was written); try a lower learning rate or stronger gradient clipping")):
        tr.train()
    assert tr.step == 2 and not any((tmp_path / "checkpoints").glob("*.pt"))


# ---------------------------------------------------------------- resuming from an unusable checkpoint

def _one_step_run(tmp_path):
    Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False).train(total_steps=1)
    path = tmp_path / "checkpoints" / "ckpt_0000001.pt"
    return path, load_checkpoint(path)


def _resume(tmp_path, cfg=None):
    return Trainer(cfg or tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False, resume=True)


def test_resume_names_what_is_wrong_with_the_checkpoint(tmp_path):
    path, state = _one_step_run(tmp_path)
    save_checkpoint({k: v for k, v in state.items() if k != "train_state"}, path)
    entries = ", ".join(sorted(k for k in state if k != "train_state"))
    with pytest.raises(CheckpointError, match=exact(
            f"no readable checkpoint in {tmp_path / 'checkpoints'}: ckpt_0000001.pt: {path} has no 'train_state' "
            f"entry; it was not written by diffusion.train.Trainer or was edited (entries present: {entries})")):
        _resume(tmp_path)

    save_checkpoint(dict(state, config={**state["config"], "model": {**state["config"]["model"], "ch": "wide"}}), path)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path} holds a configuration this code cannot read: ")):
        _resume(tmp_path)

    raw = config_to_dict(tiny_cfg())
    raw["model"]["ch"] = 64
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path} was trained with another model configuration "
                                                              "(model.ch: 32 → 64)")):
        _resume(tmp_path, config_from_dict(raw))

    weights = dict(state["model"], **{"out_conv.bias": torch.zeros(2)})
    save_checkpoint(dict(state, model=weights), path)
    with pytest.raises(CheckpointError, match=exact(
            f"the model weights of {path} do not fit this model (1 shape mismatches: out_conv.bias [2] in the "
            "checkpoint vs [1] in the model); the checkpoint was trained with another architecture or dataset "
            "(channels, image size, classes)")):
        _resume(tmp_path)
    ema = dict(state["ema"], module={k: v for k, v in state["ema"]["module"].items() if k != "out_conv.bias"})
    save_checkpoint(dict(state, ema=ema), path)
    with pytest.raises(CheckpointError, match=exact(
            f"the EMA weights of {path} do not fit this model (1 missing keys: out_conv.bias); the checkpoint was "
            "trained with another architecture or dataset (channels, image size, classes)")):
        _resume(tmp_path)


def test_resume_names_an_optimizer_state_that_does_not_fit(tmp_path):
    path, state = _one_step_run(tmp_path)
    bad = {"state": {}, "param_groups": []}
    try:
        torch.optim.Adam(torch.nn.Linear(1, 1).parameters()).load_state_dict(bad)
    except (ValueError, KeyError, RuntimeError) as err:
        reason = " ".join(str(err).split())
    save_checkpoint(dict(state, optimizer=bad), path)
    with pytest.raises(CheckpointError, match=exact(f"{path} does not fit this model: {reason}")):
        _resume(tmp_path)


def test_resume_with_a_changed_ema_warmup_uses_it(tmp_path):
    _one_step_run(tmp_path)
    raw = config_to_dict(tiny_cfg())
    raw["train"]["ema_warmup"] = not raw["train"]["ema_warmup"]
    tr = Trainer(config_from_dict(raw), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False,
                 resume=True, allow_config_change=True)
    assert (tr.ema.warmup, tr.ema.decay) == (raw["train"]["ema_warmup"], 0.9)
    tr.close()


def test_history_records_each_start_whole(tmp_path):
    """history.jsonl: the fresh start, the resume (its checkpoint and step) and a second train() call of the same
    trainer, each line with exactly these entries."""
    path, _ = _one_step_run(tmp_path)
    tr = _resume(tmp_path)
    tr.train(total_steps=2)
    tr.train(total_steps=3)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    for record in history:  # when, which process and which host wrote it
        assert set(record) >= {"time", "pid", "host"}
        del record["time"], record["pid"], record["host"]
    assert history == [
        {"event": "start", "step": 0, "checkpoint": None, "config_changes": {}, "skipped_checkpoints": [],
         "set_aside": [], "total_steps": 1},
        {"event": "resume", "step": 1, "checkpoint": str(path), "config_changes": {}, "skipped_checkpoints": [],
         "set_aside": [], "total_steps": 2},
        {"event": "continue", "step": 2, "checkpoint": None, "config_changes": {}, "skipped_checkpoints": [],
         "set_aside": [], "total_steps": 3},
    ]


def test_resume_with_another_world_size_reseeds_and_says_so(tmp_path, capsys):
    """A checkpoint of two processes resumed by one: model and optimizer restored, the data order reseeded
    with seed + 7919·step + rank; the trainer remembers the checkpoint it resumed from."""
    path, state = _one_step_run(tmp_path)
    save_checkpoint(dict(state, world_size=2, rank_states=state["rank_states"] * 2), path)
    capsys.readouterr()
    tr = _resume(tmp_path)
    assert torch.initial_seed() == 0 + 7919 * 1 + 0
    assert capsys.readouterr().err == (f"note: {path} was written by 2 process(es), this run has 1; model and "
                                       "optimizer restored, data order reseeded\n")
    assert tr.last_checkpoint == path
    assert tr.train(total_steps=1)["checkpoint"] == str(path)  # nothing to do: the resumed checkpoint is the last
    tr.close()


def test_reseeding_after_a_world_size_change_uses_step_and_rank(tmp_path):
    """The reseed is seed + 7919·step + rank for every step and rank (here step 2, ranks 0 and 1 of 3)."""
    Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False).train(total_steps=2)
    path = tmp_path / "checkpoints" / "ckpt_0000002.pt"
    state = load_checkpoint(path)
    save_checkpoint(dict(state, world_size=2, rank_states=state["rank_states"] * 2), path)
    tr = _resume(tmp_path)
    assert torch.initial_seed() == 0 + 7919 * 2 + 0
    tr.dist = SimpleNamespace(rank=1, world_size=3, local_rank=1)  # as rank 1 of three processes would
    tr._load()
    assert torch.initial_seed() == 0 + 7919 * 2 + 1
    tr.close()


def test_a_second_signal_stops_at_once(tmp_path):
    tr = _trainer(tmp_path)
    try:
        tr.signals.handle(signal.SIGTERM)
    except KeyboardInterrupt:  # caught here: pytest would take it for the user stopping the run
        pytest.fail("the first signal stopped the run at once instead of at the next step")
    assert tr.signals.received == signal.SIGTERM and tr.signals.name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        tr.signals.handle(signal.SIGINT)
    assert tr.signals.received == signal.SIGTERM
    tr.close()


def test_fast_path_settings_are_cuda_only(tmp_path):
    """bf16, channels_last and the fused Adam belong to CUDA: on the CPU the trainer runs the plain fp32 step with
    contiguous weights, a float learning rate and the reference Adam, and one seeded stream gives the model's
    initialisation and then the training noise."""
    cfg = tiny_cfg()
    assert cfg.train.bf16 and cfg.train.channels_last  # the defaults ask for the fast path
    torch.manual_seed(cfg.train.seed)
    build_model(cfg, tiny_data())
    after_init = torch.get_rng_state()
    tr = Trainer(cfg, data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), after_init)
    assert tr.channels_last is False and tr.compile is False
    assert all(p.is_contiguous() for p in tr.model.parameters())
    assert tr.optimizer.defaults["fused"] is None and tr.optimizer.defaults["betas"] == (0.9, 0.999)
    assert all(type(g["lr"]) is float for g in tr.optimizer.param_groups)
    assert tr.net is tr.model and tr.null_class == 3
    tr.close()


def test_train_step_is_algorithm_1_written_out(tmp_path):
    """One step with two micro-batches, label dropout and no clipping, against the same draws made by hand:
    t ~ U{0..T−1}, ε ~ N(0, I), labels → ∅ where U(0, 1) < p_uncond, L_simple per micro-batch / 2 summed; the
    SGD update (lr 1) is minus the gradient of that sum, and its norm is what the statistics record."""
    tr = _trainer(tmp_path)
    model, diffusion = tr.model, tr.diffusion
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(5)
    model.zero_grad()
    expected = 0.0
    for xh, yh in zip(x0.chunk(2), y.chunk(2)):
        t = torch.randint(0, diffusion.num_timesteps, (4,))
        noise = torch.randn_like(xh)
        yh = torch.where(torch.rand(4) < 0.5, torch.full_like(yh, 3), yh)
        loss = diffusion.training_losses(model, xh, t, model_kwargs={"y": yh}, noise=noise)["loss"].mean() / 2
        loss.backward()
        expected = expected + loss.detach()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)

    stats = TrainStats(torch.device("cpu"))
    step = make_train_step(model, diffusion, torch.optim.SGD(model.parameters(), lr=1.0), None, grad_clip=None,
                           p_uncond=0.5, null_class=3, grad_accum=2, stats=stats)
    torch.manual_seed(5)
    assert torch.equal(step(x0, y), expected)
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - g, rtol=0, atol=1e-6)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert stats.read()["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    tr.close()


def test_train_step_defaults_are_one_fp32_batch_without_compiling(tmp_path):
    """Defaults: grad_accum 1 (a batch of 5 is fine), no bf16 (the loss equals the explicit fp32 one), clipping at 1."""
    tr = _trainer(tmp_path)
    x0, y = torch.zeros(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    losses = []
    for kw in ({}, dict(grad_accum=1, bf16=False, compile=False, grad_clip=1.0)):
        tr.model.load_state_dict(state)
        torch.manual_seed(1)
        step = make_train_step(tr.model, tr.diffusion, torch.optim.SGD(tr.model.parameters(), lr=1.0), None,
                               null_class=3, **kw)
        losses.append((step(x0, y), [p.detach().clone() for p in tr.model.parameters()]))
    assert torch.equal(losses[0][0], losses[1][0])
    assert all(torch.equal(a, b) for a, b in zip(losses[0][1], losses[1][1]))
    tr.close()


# ---------------------------------------------------------------- the loop, on a clock of our own

class _Clock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def _clocked(tr, monkeypatch, step_s=0.5, sample_s=10.0, save_s=20.0, on_step=None):
    """Make the trainer's clock advance only by ``step_s`` per training step, ``sample_s`` per sample grid and
    ``save_s`` per checkpoint; ``on_step(step)`` runs after each step."""
    clock = _Clock()
    monkeypatch.setattr(diffusion.train, "time", clock)
    inner_step, inner_grid, inner_save = tr.train_step, tr._sample_grid, tr.save

    def train_step(x, y):
        out = inner_step(x, y)
        clock.now += step_s
        if on_step:
            on_step(tr.step + 1)
        return out

    def timed(fn, seconds):
        def run():
            out = fn()
            clock.now += seconds
            return out
        return run

    tr.train_step, tr._sample_grid, tr.save = train_step, timed(inner_grid, sample_s), timed(inner_save, save_s)
    return clock


def test_loop_times_logs_and_result_on_a_controlled_clock(tmp_path, monkeypatch):
    """Four steps of 0.5 s, a sample grid (10 s) after step 2 and the final checkpoint (20 s): each logged interval
    is 1 s of training for 16 images (the sample time is excluded from the rate, not from the elapsed time);
    the call took 32 s for 32 images. CPU runs use deterministic algorithms (warning only), restored afterwards."""
    from diffusion.config import config_to_dict

    cfg = tiny_cfg(total_steps=4, log_every=2, ckpt_every=4, sample_every=[2])
    tr = Trainer(cfg, data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False, sample_num=2, sample_steps=2)
    modes = []
    _clocked(tr, monkeypatch, on_step=lambda step: modes.append(
        (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())))
    assert not torch.are_deterministic_algorithms_enabled()
    result = tr.train()
    assert modes == [(True, True)] * 4 and not torch.are_deterministic_algorithms_enabled()
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["images_per_s"], r["elapsed_s"], r["lr"]) for r in rows] == [
        (2, 16.0, 1.0, 2e-3), (4, 16.0, 12.0, 2e-3)]
    ckpt = tmp_path / "checkpoints" / "ckpt_0000004.pt"
    assert result == {
        "step": 4, "loss": rows[1]["loss"], "ema_loss": rows[1]["ema_loss"], "wall_time_s": 32.0, "elapsed_s": 12.0,
        "images_per_s": 1.0, "interrupted": None, "out_dir": str(tmp_path), "checkpoint": str(ckpt),
        "metrics": str(tmp_path / "metrics.jsonl"),
        "samples": [str(tmp_path / "samples" / "step_000002.png"), str(tmp_path / "samples" / "step_000002.npz")]}
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.pt")] == [ckpt.name]
    assert (tmp_path / "config.json").read_text() == json.dumps(config_to_dict(cfg), indent=2) + "\n"


def test_a_stop_signal_logs_saves_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg(total_steps=6, log_every=4, ckpt_every=4)
    tr = Trainer(cfg, data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)

    def stop_after(step):
        if step == 3:
            tr.signals.handle(signal.SIGTERM)

    _clocked(tr, monkeypatch, on_step=stop_after)
    capsys.readouterr()
    try:
        result = tr.train()
    except KeyboardInterrupt:  # caught here: pytest would take it for the user stopping the run
        pytest.fail("one stop signal interrupted the run instead of ending it after the step")
    ckpt = tmp_path / "checkpoints" / "ckpt_0000003.pt"
    assert (result["step"], result["interrupted"], result["checkpoint"]) == (3, "SIGTERM", str(ckpt))
    assert [(r["step"], r["images_per_s"], r["elapsed_s"]) for r in read_metrics(tmp_path)] == [(3, 16.0, 1.5)]
    assert capsys.readouterr().err == f"SIGTERM: stopped at step 3; checkpoint {ckpt}; continue with --resume\n"


def test_progress_bar_counts_steps_from_the_resumed_step(tmp_path, capsys):
    Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False).train(total_steps=2)
    assert capsys.readouterr().err == ""  # progress=False: nothing on stderr
    Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", resume=True).train(total_steps=4)
    err = capsys.readouterr().err
    assert "train tiny: 100%" in err and "4/4" in err and "2/4" not in err.split("\r")[-1]
    assert re.search(r"\d(step/s|s/step)", err)


@pytest.mark.parametrize("step_s, rate, elapsed", [(0.12345, "65", [0.123, 0.247]), (0.0, "0", [0.0, 0.0])])
def test_logged_values_reach_the_progress_bar(tmp_path, monkeypatch, capsys, step_s, rate, elapsed):
    """The bar's postfix shows the last logged loss, EMA loss and images per second (0 when the interval took no
    measurable time, where the log says null); the log rounds the elapsed time to milliseconds."""
    tr = Trainer(tiny_cfg(total_steps=2), data=tiny_data(), out_dir=tmp_path, device="cpu")
    _clocked(tr, monkeypatch, step_s=step_s, save_s=0.0)
    capsys.readouterr()
    tr.train()
    rows = read_metrics(tmp_path)
    assert [r["elapsed_s"] for r in rows] == elapsed
    assert [r["images_per_s"] for r in rows] == ([pytest.approx(8 / step_s)] * 2 if step_s else [None, None])
    last = capsys.readouterr().err.split("\r")[-1]
    assert f"ema={rows[-1]['ema_loss']:.4f}, img_s={rate}, loss={rows[-1]['loss']:.4f}]" in last  # tqdm sorts them


def test_trainer_defaults(tmp_path, monkeypatch):
    """Default run folder runs/<name>, stage samples (64 images, DDIM, 50 steps), no config changes on resume."""
    monkeypatch.chdir(tmp_path)
    tr = Trainer(tiny_cfg(), data=tiny_data(), device="cpu")
    assert tr.out_dir == Path("runs") / "tiny" and tr.ckpt_dir == Path("runs") / "tiny" / "checkpoints"
    assert tr.metrics_path == Path("runs") / "tiny" / "metrics.jsonl"
    assert (tr.sample_num, tr.sample_sampler, tr.sample_steps, tr.allow_config_change, tr.progress) == (
        64, "ddim", 50, False, True)
    assert (tr.local_batch, tr.is_main, tr.step) == (8, True, 0) and type(tr.local_batch) is int
    assert (tmp_path / "runs" / "tiny" / "run.lock").exists()  # the folder is locked from construction on
    tr.close()


def test_taking_over_a_dead_runs_lock_is_announced(tmp_path, capsys):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(),
                                                   "started": "2026-01-01T00:00:00+00:00", "command": "train"}))
    capsys.readouterr()
    tr = Trainer(tiny_cfg(), data=tiny_data(), out_dir=tmp_path, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: took over the lock of {tmp_path} left by ") and err.endswith(
        "which ended without releasing it (killed or crashed)\n") and err.count("\n") == 1
    tr.close()


def test_metrics_are_truncated_to_the_start_step(tmp_path):
    tr = _trainer(tmp_path)
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], '{"step": 1, "lo', lines[1],
                                                       json.dumps({"step": 3}), '{"no step": 0}', "[1]"]) + "\n")
    tr.folder.truncate_metrics(2)
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"
    tr.close()


def test_processes_agree_on_a_stop_every_log_interval(tmp_path, monkeypatch):
    """Under DDP a signal seen by any rank stops every rank, checked (one collective) every ``log_every`` steps."""
    tr = _trainer(tmp_path)
    tr.dist = SimpleNamespace(rank=0, world_size=2, local_rank=0)
    reduced = []

    def all_reduce_max(flag):
        reduced.append(float(flag))
        return torch.tensor(max(float(flag), other))

    monkeypatch.setattr(diffusion.stop_signals.distributed, "all_reduce_max", all_reduce_max)
    other = 0.0

    def stop(log_every):
        return tr.signals.requested(tr.step, log_every, tr.dist.world_size, tr.device)

    tr.step = 3
    assert stop(2) is False and reduced == []  # not a log step: no collective
    tr.step = 4
    assert stop(2) is False and reduced == [0.0] and tr.signals.received is None
    other = float(signal.SIGTERM)  # another rank was signalled
    assert stop(2) is True and tr.signals.received == signal.SIGTERM
    other, reduced[:] = 0.0, []
    tr.signals.received = signal.SIGINT  # this rank was signalled
    assert stop(2) is True and reduced == [float(signal.SIGINT)] and tr.signals.received == signal.SIGINT
    tr.dist = SimpleNamespace(rank=0, world_size=1, local_rank=0)
    tr.signals.received = None
    assert stop(2) is False
    tr.close()
