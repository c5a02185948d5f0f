"""One entry point over the samplers of an ε-model: ancestral (algorithm 2 / eq. 15), respaced ancestral,
DDIM, and DPM-Solver++(2M), each optionally with classifier-free guidance (eq. 18)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusion.progress import tqdm

from .fast import Bf16Model
from .gaussian_diffusion import GaussianDiffusion
from .guidance import ClassifierFreeGuidance
from .respace import SpacedDiffusion, space_timesteps

SAMPLERS = ("ancestral", "ddim", "dpmpp2m")


@contextlib.contextmanager
def _eval_mode(model):
    training = getattr(model, "training", None)
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def dpmpp2m_timesteps(alpha_bar: np.ndarray, steps: int) -> list[int]:
    """Exactly ``steps`` distinct indices from T−1 down to 0, evenly spaced in log-SNR λ = ½ log(ᾱ/(1−ᾱ))
    (the spacing Lu et al. recommend): the k-th is the index whose λ is nearest to the k-th target, moved
    only when that index is taken or would leave too few indices for the remaining steps,
    i_k = max(steps−1−k, min(nearest_k, i_{k−1}−1)). Near the clean end λ changes fast between indices, so
    with many steps several targets fall nearest to the same small index; those steps take the next free
    ones, and ``steps`` requested means ``steps`` network calls."""
    T = len(alpha_bar)
    if not 1 <= int(steps) <= T:
        raise ValueError(f"steps must lie in [1, {T}], got {steps!r}")
    steps = int(steps)
    lam = 0.5 * (np.log(alpha_bar) - np.log1p(-alpha_bar))
    chosen: list[int] = []
    for k, target in enumerate(np.linspace(lam[-1], lam[0], steps)):
        i = int(np.argmin(np.abs(lam - target)))
        if chosen:
            i = min(i, chosen[-1] - 1)
        chosen.append(max(i, steps - 1 - k))
    return chosen


@torch.no_grad()
def dpmpp2m_sample_loop(diffusion: GaussianDiffusion, model, shape, steps: int, noise=None, model_kwargs=None,
                        clip_denoised=True, generator=None, progress=False, device=None, trajectory_steps=None):
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) on the data prediction x̂_0 of an ε/x0/v model.

    With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t) and h = λ_t − λ_s, one step from s to t is
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D, where D = x̂_0(s) on the first step and
    D = (1 + 1/(2r)) x̂_0(s) − 1/(2r) x̂_0(s_prev), r = h_prev/h, afterwards. The last step goes to the
    clean end (ᾱ = 1, first order), i.e. returns D. Uses ``steps`` model evaluations.
    """
    ts = dpmpp2m_timesteps(diffusion.alpha_bar, steps)
    device = torch.device(device) if device is not None else (noise.device if noise is not None else torch.device("cpu"))
    x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
    ab = diffusion.alpha_bar
    lam = lambda i: 0.5 * (np.log(ab[i]) - np.log1p(-ab[i]))  # noqa: E731
    record = set(int(s) for s in trajectory_steps) if trajectory_steps is not None else None
    traj = {"t": [], "x_t": [], "pred_x0": []}
    prev_x0, h_prev = None, None
    for k, s in enumerate(tqdm(ts, desc="dpm-solver++(2M)", disable=not progress, leave=False)):
        t_vec = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
        x0 = diffusion._p_mean_variance(model(x, t_vec, **(model_kwargs or {})), x, t_vec, clip_denoised)["pred_x0"]
        if record is not None and s in record:
            traj["t"].append(s)
            traj["x_t"].append(x.cpu())
            traj["pred_x0"].append(x0.cpu())
        if k == len(ts) - 1:  # final step to the clean end: first order, x = D = x̂_0
            x = x0
            break
        t = ts[k + 1]
        h = lam(t) - lam(s)
        if prev_x0 is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        sigma_s, sigma_t, alpha_t = np.sqrt(1 - ab[s]), np.sqrt(1 - ab[t]), np.sqrt(ab[t])
        x = float(sigma_t / sigma_s) * x - float(alpha_t * np.expm1(-h)) * d
        prev_x0, h_prev = x0, h
    if record is None:
        return x
    return x, {"t": traj["t"], "x_t": torch.stack(traj["x_t"]) if traj["x_t"] else None,
               "pred_x0": torch.stack(traj["pred_x0"]) if traj["pred_x0"] else None}


@torch.no_grad()
def sample(diffusion: GaussianDiffusion, model, shape, sampler: str = "ancestral", steps: int | None = None,
           eta: float = 0.0, guidance_scale: float | None = None, y: torch.Tensor | None = None,
           null_class: int | None = None, generator: torch.Generator | None = None, progress: bool = False,
           clip_denoised: bool = True, return_trajectory: bool = False, noise: torch.Tensor | None = None,
           device=None, cuda_graph: bool = False, bf16: bool | None = None):
    """Draw samples from ``model`` with the named sampler (clamped to [-1, 1] when ``clip_denoised``).

    - ``ancestral``: algorithm 2 (eq. 15) over all T steps, or over ``steps`` respaced steps;
    - ``ddim``: DDIM with ``eta`` over ``steps`` evenly spaced steps (η = 0 deterministic);
    - ``dpmpp2m``: DPM-Solver++(2M) with ``steps`` model evaluations.
    With ``guidance_scale`` = w the model is wrapped by classifier-free guidance, eq. (18) (needs ``y``
    and ``null_class``); otherwise ``y`` (if given) is passed to the model as its class labels.
    With ``return_trajectory`` also returns x_t and the predicted x_0 at about ten steps.
    ``bf16`` runs the network under bf16 autocast with a float32 output (``diffusion.fast.Bf16Model``);
    ``None`` (default) means on CUDA only — the sampler's own arithmetic stays in float32 either way.
    With ``cuda_graph`` (CUDA only) the model call is captured once as a CUDA graph for this batch
    shape and replayed at every step (``diffusion.cuda_graph.GraphedModel``; eager fallback with a warning).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    T = diffusion.num_timesteps
    steps = T if steps is None else int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}], got {steps}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if device is None:
        device = noise.device if noise is not None else next(
            (p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
    if y is not None:
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        if y.shape != (shape[0],):
            raise ValueError(f"y must hold one class index per sample, shape ({shape[0]},), got {tuple(y.shape)}")
        hi = null_class if null_class is not None else None
        if int(y.min()) < 0 or (hi is not None and int(y.max()) > hi):
            raise ValueError(f"class indices y must lie in [0, {hi}] (the last is the null token), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
    net = model
    if guidance_scale is not None:
        if y is None or null_class is None:
            raise ValueError("guidance_scale needs class labels y and the null_class index")
        net = ClassifierFreeGuidance(model, guidance_scale, null_class)
    use_bf16 = torch.device(device).type == "cuda" if bf16 is None else bool(bf16)
    if use_bf16:
        net = Bf16Model(net)
    kwargs = {"y": y} if y is not None else None
    traj_steps = None
    if return_trajectory:
        traj_steps = list(np.unique(np.linspace(0, T - 1, 10).round().astype(int)))
    with _eval_mode(model):
        # --- optional CUDA-graph replay of the model call ---
        if cuda_graph:
            from .cuda_graph import GraphedModel
            example_x = noise if noise is not None else torch.zeros(shape, device=device)
            net = GraphedModel(net, example_x, torch.zeros(shape[0], dtype=torch.long, device=device), example_y=y)
        # --- end CUDA graph ---
        if sampler == "dpmpp2m":
            base = diffusion.base if isinstance(diffusion, SpacedDiffusion) else diffusion
            if traj_steps is not None:
                ts = dpmpp2m_timesteps(base.alpha_bar, steps)
                traj_steps = [ts[int(i)] for i in np.unique(np.linspace(0, len(ts) - 1, min(10, len(ts))).round())]
            out = dpmpp2m_sample_loop(base, net, shape, steps, noise=noise, model_kwargs=kwargs,
                                      clip_denoised=clip_denoised, generator=generator, progress=progress,
                                      device=device, trajectory_steps=traj_steps)
        else:
            spaced = diffusion if steps == T else SpacedDiffusion(diffusion, space_timesteps(T, steps))
            if traj_steps is not None and spaced is not diffusion:
                n = spaced.num_timesteps
                traj_steps = list(np.unique(np.linspace(0, n - 1, min(10, n)).round().astype(int)))
            loop = spaced.p_sample_loop if sampler == "ancestral" else spaced.ddim_sample_loop
            extra = {"eta": eta} if sampler == "ddim" else {}
            out = loop(net, shape, noise=noise, model_kwargs=kwargs, clip_denoised=clip_denoised, generator=generator,
                       progress=progress, device=device, trajectory_steps=traj_steps, **extra)
            if traj_steps is not None and spaced is not diffusion:  # report original timestep indices
                out[1]["t"] = [int(spaced.timestep_map[i]) for i in out[1]["t"]]
    if return_trajectory:
        x, traj = out
        return (x.clamp(-1, 1) if clip_denoised else x), traj
    return out.clamp(-1, 1) if clip_denoised else out
