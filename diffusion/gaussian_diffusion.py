"""The Gaussian diffusion of chapter 2: forward process, posterior, reverse process, objectives, bound.

Timestep convention: an index ``t`` in ``0 … T-1`` stands for the thesis's step t+1. Index 0 is the
decoder step (L_0), index T-1 the last forward step. Every coefficient is a float64 numpy array,
gathered at ``t`` and cast to the input's dtype only where it is used.

A *model* is a callable ``model(x_t, t, **model_kwargs)`` returning a tensor shaped like ``x_t``: the
noise ε (eq. 12), the clean image x_0, or the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x_0, per
:class:`ModelMeanType`.
"""
from __future__ import annotations

import enum
import math

import numpy as np
import torch
from diffusion.progress import tqdm

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .schedules import get_beta_schedule


class ModelMeanType(enum.Enum):
    """What the network predicts; each determines μ_θ through the posterior mean of eq. (9)."""

    EPSILON = "eps"   # ε_θ(x_t, t), eq. (12)
    START_X = "x0"    # x_0 directly
    VELOCITY = "v"    # v = √ᾱ_t ε − √(1−ᾱ_t) x_0


class ModelVarType(enum.Enum):
    """The fixed reverse variance σ_t² of section 2.3.1."""

    FIXED_LARGE = "fixed_large"  # σ_t² = β_t
    FIXED_SMALL = "fixed_small"  # σ_t² = β̃_t (log clipped at index 0 to β̃ of index 1)


class DecoderVariance(enum.Enum):
    """σ_1² of the decoder p_θ(x_0 | x_1) (index 0, the term L_0 of eq. 7) for ``FIXED_LARGE``.

    The paper's text sets σ_t² = β_t for every t, so σ_1² = β_1. DDPM's released code (and improved DDPM)
    replaces it by the posterior variance β̃_2 of the second step, "to get a better decoder log likelihood";
    the bits/dim DDPM reports were computed that way. Only the bound changes: the sampler adds no noise at
    index 0. ``FIXED_SMALL`` always uses β̃_2 there (β̃_1 = 0).
    """

    DDPM_CODE = "ddpm_code"  # σ_1² = β̃_2 (np.append(posterior_variance[1], betas[1:]))
    PAPER = "paper"          # σ_1² = β_1


class LossType(enum.Enum):
    """Training objective."""

    SIMPLE = "simple"      # L_simple, eq. (14)
    WEIGHTED = "weighted"  # the weighted L_{t-1} of eq. (13), which equals the KL term for t > 1
    KL = "kl"              # the variational bound terms of eq. (7) (L_{t-1} and L_0), in bits/dim × T


def _enum(cls, value, argument):
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{argument} must be one of {[m.value for m in cls]}, got {value!r}") from None


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """Forward process q, posterior q(x_{t-1}|x_t,x_0) and reverse process p_θ for a β schedule."""

    def __init__(self, betas, model_mean_type=ModelMeanType.EPSILON, model_var_type=ModelVarType.FIXED_LARGE,
                 loss_type=LossType.SIMPLE, decoder_variance=DecoderVariance.DDPM_CODE):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D array with every entry in (0, 1)")
        self.model_mean_type = _enum(ModelMeanType, model_mean_type, "model_mean_type")
        self.model_var_type = _enum(ModelVarType, model_var_type, "model_var_type")
        self.loss_type = _enum(LossType, loss_type, "loss_type")
        self.decoder_variance = _enum(DecoderVariance, decoder_variance, "decoder_variance")
        self.num_timesteps = len(betas)

        self.betas = betas                                            # β_t
        self.alphas = 1.0 - betas                                     # α_t := 1 − β_t
        self.alpha_bar = np.cumprod(self.alphas)                      # ᾱ_t := Π_{s≤t} α_s
        self.alpha_bar_prev = np.append(1.0, self.alpha_bar[:-1])     # ᾱ_{t-1}, with ᾱ_0 = 1
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(1.0 - self.alpha_bar)
        self.log_one_minus_alpha_bar = np.log(1.0 - self.alpha_bar)
        self.sqrt_recip_alpha_bar = np.sqrt(1.0 / self.alpha_bar)
        self.sqrt_recip_alpha_bar_m1 = np.sqrt(1.0 / self.alpha_bar - 1.0)
        # posterior q(x_{t-1} | x_t, x_0), eq. (9)
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)   # β̃_t
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_timesteps > 1
            else np.array([betas[0]]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = (1.0 - self.alpha_bar_prev) * np.sqrt(self.alphas) / (1.0 - self.alpha_bar)
        # reverse variance σ_t², section 2.3.1
        if self.model_var_type is ModelVarType.FIXED_LARGE:
            self.model_variance = betas.copy()
            if self.decoder_variance is DecoderVariance.DDPM_CODE and self.num_timesteps > 1:
                self.model_variance[0] = self.posterior_variance[1]  # σ_1² = β̃_2 (DecoderVariance)
            self.model_log_variance = np.log(self.model_variance)
        else:
            self.model_log_variance = self.posterior_log_variance_clipped
            self.model_variance = np.exp(self.model_log_variance)
        self._device_cache: dict = {}

    # ------------------------------------------------------------------ helpers
    def wrap_model(self, model):
        """The model as this diffusion calls it (identity here; respacing maps timestep indices)."""
        return model

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Coefficient array ``name`` gathered at ``t`` and shaped to broadcast against ``x``."""
        key = (name, x.device)
        table = self._device_cache.get(key)
        if table is None:
            table = torch.as_tensor(getattr(self, name), dtype=torch.float64, device=x.device)
            self._device_cache[key] = table
        out = table[t.long()].to(x.dtype if x.dtype == torch.float64 else torch.float32)
        return out.reshape(out.shape + (1,) * (x.ndim - 1))

    def check_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Validate integer timestep indices in [0, T); returns ``t`` (skipped while compiling or capturing)."""
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be a tensor of timestep indices, got {type(t).__name__}")
        if torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
            return t
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"t must hold integer timestep indices, got dtype {t.dtype}")
        if t.is_cuda:  # checked on the device: no host synchronisation in the training step
            if t.numel():
                torch._assert_async(((t >= 0) & (t < self.num_timesteps)).all(),
                                    f"t must lie in [0, {self.num_timesteps})")
            return t
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0, t):
        """Mean, variance and log variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I), eq. (3)."""
        self.check_timesteps(t)
        mean = self._coef("sqrt_alpha_bar", t, x0) * x0
        return mean, self._coef("sqrt_one_minus_alpha_bar", t, x0) ** 2, self._coef("log_one_minus_alpha_bar", t, x0)

    def q_sample(self, x0, t, noise=None):
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, a reparameterised draw from q(x_t | x_0), eq. (3)."""
        self.check_timesteps(t)
        return self._q_sample(x0, t, torch.randn_like(x0) if noise is None else noise)

    def _q_sample(self, x0, t, noise):
        return self._coef("sqrt_alpha_bar", t, x0) * x0 + self._coef("sqrt_one_minus_alpha_bar", t, x0) * noise

    def q_step_sample(self, x_prev, t, noise=None):
        """One Markov step x_t = √(1−β_t) x_{t-1} + √β_t ε, a draw from q(x_t | x_{t-1}), eq. (2)."""
        self.check_timesteps(t)
        if noise is None:
            noise = torch.randn_like(x_prev)
        return self._coef("alphas", t, x_prev).sqrt() * x_prev + self._coef("betas", t, x_prev).sqrt() * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean μ̃_t(x_t, x_0), variance β̃_t and clipped log variance of q(x_{t-1} | x_t, x_0), eqs. (8)–(9)."""
        self.check_timesteps(t)
        return self._q_posterior(x0, x_t, t)

    def _q_posterior(self, x0, x_t, t):
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return (mean, self._coef("posterior_variance", t, x_t),
                self._coef("posterior_log_variance_clipped", t, x_t))

    # ------------------------------------------------------------------ parameterisations
    def predict_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, eq. (3) solved for x_0."""
        return self._coef("sqrt_recip_alpha_bar", t, x_t) * x_t - self._coef("sqrt_recip_alpha_bar_m1", t, x_t) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t), eq. (3) solved for ε."""
        return (self._coef("sqrt_recip_alpha_bar", t, x_t) * x_t - x0) / self._coef("sqrt_recip_alpha_bar_m1", t, x_t)

    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v for the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x_0."""
        return self._coef("sqrt_alpha_bar", t, x_t) * x_t - self._coef("sqrt_one_minus_alpha_bar", t, x_t) * v

    def velocity(self, x0, t, noise):
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0, the target of v-prediction."""
        return self._coef("sqrt_alpha_bar", t, x0) * noise - self._coef("sqrt_one_minus_alpha_bar", t, x0) * x0

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(self, model, x_t, t, model_kwargs=None, clip_denoised=True):
        """Mean μ_θ(x_t, t) and fixed variance σ_t² of p_θ(x_{t-1} | x_t), eqs. (4) and (12).

        μ_θ is the posterior mean of eq. (9) evaluated at the predicted x_0; for ε-prediction without
        clipping this is exactly eq. (12). ``clip_denoised`` clips the predicted x_0 to [-1, 1].
        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_x0`` and ``pred_eps``.
        """
        self.check_timesteps(t)
        return self._p_mean_variance(self.wrap_model(model)(x_t, t, **(model_kwargs or {})), x_t, t, clip_denoised)

    def _p_mean_variance(self, out, x_t, t, clip_denoised):
        out = out.to(x_t.dtype)
        if self.model_mean_type is ModelMeanType.EPSILON:
            pred_x0 = self.predict_x0_from_eps(x_t, t, out)
        elif self.model_mean_type is ModelMeanType.START_X:
            pred_x0 = out
        else:
            pred_x0 = self.predict_x0_from_v(x_t, t, out)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        if self.model_mean_type is ModelMeanType.EPSILON and not clip_denoised:
            pred_eps = out
        else:
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        mean, _, _ = self._q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "variance": self._coef("model_variance", t, x_t),
                "log_variance": self._coef("model_log_variance", t, x_t), "pred_x0": pred_x0, "pred_eps": pred_eps}

    def p_sample(self, model, x_t, t, model_kwargs=None, clip_denoised=True, generator=None):
        """One ancestral step x_{t-1} = μ_θ(x_t, t) + σ_t z, z = 0 at the last step (eq. 15, algorithm 2)."""
        self.check_timesteps(t)
        return self._p_sample(self.wrap_model(model), x_t, t, model_kwargs, clip_denoised, generator)

    def _p_sample(self, model, x_t, t, model_kwargs, clip_denoised, generator):
        out = self._p_mean_variance(model(x_t, t, **(model_kwargs or {})), x_t, t, clip_denoised)
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return {"sample": out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * z, "pred_x0": out["pred_x0"]}

    def _loop(self, step, shape, noise, generator, device, progress, trajectory_steps, desc):
        device = torch.device(device) if device is not None else (noise.device if noise is not None else torch.device("cpu"))
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        record = set(int(s) for s in trajectory_steps) if trajectory_steps is not None else None
        traj = {"t": [], "x_t": [], "pred_x0": []}
        indices = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = step(x, t)
            if record is not None and i in record:
                traj["t"].append(i)
                traj["x_t"].append(x.detach().cpu())
                traj["pred_x0"].append(out["pred_x0"].detach().cpu())
            x = out["sample"]
        if record is None:
            return x
        traj = {"t": traj["t"], "x_t": torch.stack(traj["x_t"]) if traj["x_t"] else None,
                "pred_x0": torch.stack(traj["pred_x0"]) if traj["pred_x0"] else None}
        return x, traj

    @torch.no_grad()
    def p_sample_loop(self, model, shape, noise=None, model_kwargs=None, clip_denoised=True, generator=None,
                      progress=False, device=None, trajectory_steps=None):
        """Algorithm 2: x_T ~ N(0, I), then eq. (15) for t = T … 1. Returns x_0.

        With ``trajectory_steps`` (indices), also returns a dict with the recorded ``x_t`` and ``pred_x0``
        at those steps (stacked along a new first dimension, in the order visited).
        """
        model = self.wrap_model(model)
        return self._loop(lambda x, t: self._p_sample(model, x, t, model_kwargs, clip_denoised, generator),
                          shape, noise, generator, device, progress, trajectory_steps, "ancestral")

    def ddim_sample(self, model, x_t, t, eta=0.0, model_kwargs=None, clip_denoised=True, generator=None):
        """One DDIM step (Song et al. 2021, eq. 12 there) from index t to the previous index of this schedule.

        x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1−ᾱ_{t-1}−σ²) ε̂ + σ z with
        σ = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t-1}); η = 1 gives σ² = β̃_t, η = 0 is deterministic.
        """
        self.check_timesteps(t)
        return self._ddim_sample(self.wrap_model(model), x_t, t, eta, model_kwargs, clip_denoised, generator)

    def _ddim_sample(self, model, x_t, t, eta, model_kwargs, clip_denoised, generator):
        out = self._p_mean_variance(model(x_t, t, **(model_kwargs or {})), x_t, t, clip_denoised)
        ab, ab_prev = self._coef("alpha_bar", t, x_t), self._coef("alpha_bar_prev", t, x_t)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        mean = out["pred_x0"] * torch.sqrt(ab_prev) + torch.sqrt((1 - ab_prev - sigma**2).clamp_min(0)) * out["pred_eps"]
        if eta == 0:
            return {"sample": mean, "pred_x0": out["pred_x0"]}
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return {"sample": mean + nonzero * sigma * z, "pred_x0": out["pred_x0"]}

    @torch.no_grad()
    def ddim_sample_loop(self, model, shape, eta=0.0, noise=None, model_kwargs=None, clip_denoised=True,
                         generator=None, progress=False, device=None, trajectory_steps=None):
        """DDIM sampling over all indices of this (possibly respaced) schedule; η = 0 is deterministic."""
        model = self.wrap_model(model)
        return self._loop(lambda x, t: self._ddim_sample(model, x, t, eta, model_kwargs, clip_denoised, generator),
                          shape, noise, generator, device, progress, trajectory_steps, f"ddim(eta={eta:g})")

    # ------------------------------------------------------------------ objectives
    def training_losses(self, model, x0, t, model_kwargs=None, noise=None):
        """Per-example training loss at timestep indices ``t``.

        SIMPLE: L_simple = ‖target − model(x_t, t)‖² averaged over pixels, eq. (14) (target ε, x_0 or v).
        WEIGHTED: eq. (13), β_t²/(2σ_t² α_t (1−ᾱ_t)) ‖ε − ε_θ‖² summed over pixels (ε-prediction only).
        KL: T × the bound term of eq. (7) at t (L_{t-1}, or L_0 at index 0) in bits/dim.
        Returns a dict with ``loss`` (B,) and ``mse`` (B,).
        """
        self.check_timesteps(t)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self._q_sample(x0, t, noise)  # t checked above: once per step
        out = self.wrap_model(model)(x_t, t, **(model_kwargs or {}))
        target = {ModelMeanType.EPSILON: noise, ModelMeanType.START_X: x0,
                  ModelMeanType.VELOCITY: None}[self.model_mean_type]
        if target is None:
            target = self.velocity(x0, t, noise)
        sq = (target - out.float()) ** 2
        mse = mean_flat(sq)
        if self.loss_type is LossType.SIMPLE:
            return {"loss": mse, "mse": mse}
        if self.loss_type is LossType.WEIGHTED:
            if self.model_mean_type is not ModelMeanType.EPSILON:
                raise ValueError("loss_type 'weighted' (eq. 13) is defined for mean_type 'eps' only")
            w = self._coef("betas", t, x0) ** 2 / (2 * self._coef("model_variance", t, x0) * self._coef("alphas", t, x0)
                                                   * (1 - self._coef("alpha_bar", t, x0)))
            return {"loss": (w * sq).sum(dim=tuple(range(1, x0.ndim))), "mse": mse}
        vb = self._vb_terms_bpd(out, x0, x_t, t, clip_denoised=False)
        return {"loss": vb * self.num_timesteps, "mse": mse}

    def weighted_loss_weight(self) -> np.ndarray:
        """The weight β_t²/(2σ_t² α_t (1−ᾱ_t)) of eq. (13) for every t (float64)."""
        return self.betas**2 / (2 * self.model_variance * self.alphas * (1 - self.alpha_bar))

    # ------------------------------------------------------------------ variational bound
    def prior_bpd(self, x0):
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) of eq. (7), in bits/dim, per example."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, _, logvar = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / math.log(2.0)

    def vb_terms_bpd(self, model, x0, x_t, t, model_kwargs=None, clip_denoised=True):
        """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) for index t > 0 and L_0 = −log p_θ(x_0|x_1)
        (discretised decoder of section 2.4.2) at index 0, eq. (7), in bits/dim per example."""
        self.check_timesteps(t)
        return self._vb_terms_bpd(self.wrap_model(model)(x_t, t, **(model_kwargs or {})), x0, x_t, t, clip_denoised)

    def _vb_terms_bpd(self, out, x0, x_t, t, clip_denoised):
        true_mean, _, true_logvar = self._q_posterior(x0, x_t, t)
        p = self._p_mean_variance(out, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def calc_bpd_loop(self, model, x0, model_kwargs=None, clip_denoised=True, progress=False, t_batch=1,
                      generator=None):
        """The full bound L = L_T + Σ_{t>1} L_{t-1} + L_0 of eq. (7) in bits/dim, over all T terms.

        ``t_batch`` timesteps are evaluated in one batched forward pass (the images repeated).
        Returns ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T) and ``mse`` (B, T) (ε-MSE per term).
        """
        B, T = x0.shape[0], self.num_timesteps
        model = self.wrap_model(model)
        vb = torch.zeros(B, T, device=x0.device)
        mse = torch.zeros(B, T, device=x0.device)
        kwargs = model_kwargs or {}
        starts = list(range(T - 1, -1, -t_batch))
        for hi in tqdm(starts, desc="bound terms", disable=not progress, leave=False):
            ts = list(range(hi, max(hi - t_batch, -1), -1))
            t = torch.tensor(ts, device=x0.device).repeat_interleave(B)
            xb = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
            noise = torch.randn(xb.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x_t = self.q_sample(xb, t, noise)
            rep = {k: (v.repeat(len(ts), *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v)
                   for k, v in kwargs.items()}
            out = model(x_t, t, **rep)
            terms = self._vb_terms_bpd(out, xb, x_t, t, clip_denoised)
            eps = self._p_mean_variance(out, x_t, t, clip_denoised)["pred_eps"]
            for j, ti in enumerate(ts):
                vb[:, ti] = terms[j * B:(j + 1) * B]
                mse[:, ti] = mean_flat((eps[j * B:(j + 1) * B] - noise[j * B:(j + 1) * B]) ** 2)
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "mse": mse}


def create_diffusion(schedule="linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02, mean_type="eps",
                     var_type="fixed_large", loss_type="simple", decoder_variance="ddpm_code") -> GaussianDiffusion:
    """A :class:`GaussianDiffusion` from names (section 3.3.2 defaults: linear 1e-4 … 0.02, T = 1000)."""
    betas = get_beta_schedule(schedule, num_timesteps, beta_start, beta_end)
    return GaussianDiffusion(betas, _enum(ModelMeanType, mean_type, "mean_type"),
                             _enum(ModelVarType, var_type, "var_type"), _enum(LossType, loss_type, "loss_type"),
                             _enum(DecoderVariance, decoder_variance, "decoder_variance"))
