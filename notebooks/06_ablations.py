# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Ablations (section 4.4) and likelihood
#
# 1. **Sampling steps** (§4.4.1, table 5): ancestral sampling over respaced schedules and DDIM (η = 0) with
#    1000/250/100/50/… steps — quality (classifier FD, conditional accuracy) against time per image.
# 2. **Width and depth** (§4.4.2): variants of the conditional network trained with the same steps and batch.
# 3. **Memorisation** (figure 2a): unconditional samples beside their nearest training images (L2, pixels).
# 4. **Bits/dim** (§2.4.2): the full bound of eq. (7) on held-out images for σ_t² = β_t (fixed-large) and
#    σ_t² = β̃_t (fixed-small), with its L_T and L_0 parts.
# 5. **FID / IS** where the official Inception weights exist, beside the proxy numbers.

# %% tags=["parameters"]
profile = "quick"
out_dir = None
cache_dir = None
seed = 0
threads = 0
cond = None
uncond = None
variants = {"base": {"model.ch_mult": [1, 2, 2], "model.num_res_blocks": 2},
            "narrow": {"model.ch_mult": [1, 1, 1], "model.num_res_blocks": 2},
            "shallow": {"model.ch_mult": [1, 2, 2], "model.num_res_blocks": 1}}
classifier_steps = 600
step_counts = [1000, 250, 100, 50, 20, 10]
quality_max_steps = 100
samples_per_setting = 64
eps_error_images = 512
full_ancestral_samples = 16
variant_steps = 100
variant_batch = 32
variant_samples = 64
bpd_images = 4
nn_samples = 8

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import experiments, report
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.metrics.classifier import classifier_fd, conditional_accuracy

torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)
cond, uncond = experiments.model_spec(profile, "cond", cond), experiments.model_spec(profile, "uncond", uncond)
art = report.Artefacts(profile, "06_ablations", out_dir, cache_root=cache_dir, seed=seed, config=cond)
tm = experiments.trained_model(art, cond, "cond")
art.dataset = tm.data.label
T, K = tm.diffusion.num_timesteps, tm.null_class
clf, test = experiments.proxy_classifier(cond, classifier_steps)
print(f"{tm.data.label}: T = {T}; proxy classifier held-out accuracy {100 * clf.accuracy:.1f}%")

# %% [markdown]
# ## 1. Sampling steps (table 5)
# Conditional samples (plain conditional model, no guidance) with labels cycling through the classes.
# Settings with more than `quality_max_steps` steps draw only `full_ancestral_samples` images (their
# quality numbers are then rough, and marked with their sample count); the time per image is the wall time
# of generating the set divided by its size, on this profile's device.

# %%
steps_list = sorted({min(int(s), T) for s in step_counts}, reverse=True)
res = {}
SAMPLER_TITLES = {"ancestral": "ancestral (respaced)", "ddim": "DDIM, η = 0", "dpmpp2m": "DPM-Solver++(2M)"}
for smp in SAMPLER_TITLES:
    for S in steps_list:
        n = samples_per_setting if S <= quality_max_steps else full_ancestral_samples
        y = np.arange(n) % K
        out = experiments.generate(art, tm, n, sampler=smp, steps=S, y=y, seed=seed, tag="steps")
        x = torch.from_numpy(out["images"])
        res[smp, S] = dict(n=n, images=out["images"], spi=out["seconds_per_image"],
                           cfd=classifier_fd(clf, x, test.images)["cfd"],
                           acc=100 * conditional_accuracy(clf, x, y)["accuracy"])
        r = res[smp, S]
        print(f"{smp:9s} {S:5d} steps, n = {n:4d}: classifier FD {r['cfd']:8.2f}, accuracy {r['acc']:5.1f}%, "
              f"{r['spi']:.3f} s/image")
rows = [[smp, str(S), str(r["n"]), f"{r['cfd']:.2f}", f"{r['acc']:.1f}", f"{r['spi']:.3f}"]
        for (smp, S), r in res.items()]
art.save_table("sampling_steps", report.booktabs_tabular(
    ["sampler", "steps", "samples", "classifier FD", "accuracy (%)", "time (s/image)"], rows, align="lrrrrr"))
art.number("StepsTimeFull", res["ancestral", steps_list[0]]["spi"], "{:.3f}")
art.number("StepsCfdFull", res["ancestral", steps_list[0]]["cfd"], "{:.2f}")
if ("ddim", 50) in res:
    art.number("StepsTimeFifty", res["ddim", 50]["spi"], "{:.3f}")
    art.number("StepsCfdFifty", res["ddim", 50]["cfd"], "{:.2f}")
    art.number("StepsCfdFiftyAncestral", res["ancestral", 50]["cfd"], "{:.2f}")
else:
    for name in ("StepsTimeFifty", "StepsCfdFifty", "StepsCfdFiftyAncestral"):
        art.number(name, "n/a (50 steps not in this profile)")

ncol = min(8, full_ancestral_samples, samples_per_setting)
fig, axes = plt.subplots(1, len(SAMPLER_TITLES), figsize=(len(SAMPLER_TITLES) * 0.5 * ncol + 1.5,
                                                         0.5 * len(steps_list) + 0.6))
for ax, (smp, title) in zip(axes, SAMPLER_TITLES.items()):
    report.show_images(ax, np.concatenate([res[smp, S]["images"][:ncol] for S in steps_list]), nrow=ncol,
                       row_labels=[f"{S} steps" for S in steps_list] if smp == "ancestral" else None,
                       title=title)
art.save_figure(fig, "sampling_steps")

fig, ax = plt.subplots(figsize=(4, 2.8))
for smp in SAMPLER_TITLES:
    ax.plot([res[smp, S]["spi"] for S in steps_list], [res[smp, S]["cfd"] for S in steps_list], "o-", label=smp)
ax.set_xscale("log"), ax.set_xlabel("time per image (s)"), ax.set_ylabel("classifier FD")
ax.legend()
plt.show()

# %% [markdown]
# ### Why the deterministic samplers lag here: the ε-error at each timestep
# L_simple (eq. 14) per timestep on held-out images, for the network and for the trivial predictor ε̂ = x_t
# (`diffusion.metrics.eps_error`). An ε-error at step t becomes an error (1−ᾱ_t)/ᾱ_t times larger in the
# predicted x̂_0; DDIM (η = 0) and DPM-Solver++ follow one deterministic trajectory from x_T and keep
# that error, while the ancestral sampler's fresh noise at each step masks it.

# %%
from diffusion.metrics.eps_error import eps_error_by_timestep  # noqa: E402

eps_ts = sorted({min(int(v), T - 1) for v in np.geomspace(1, T, 14).round() - 1}
                | {int(f * T) - 1 for f in (0.7, 0.8, 0.9, 0.95, 0.98)})  # denser where x̂_0 errors blow up
dev_m = next(tm.model.parameters()).device
x_held = test.images[:eps_error_images].to(dev_m).float() / 127.5 - 1
y_held = test.labels[:eps_error_images].to(dev_m)
eps_err = eps_error_by_timestep(tm.diffusion, tm.model, x_held, eps_ts, model_kwargs={"y": y_held},
                                generator=torch.Generator(device=dev_m).manual_seed(seed))
fig, axes = plt.subplots(1, 2, figsize=(8, 2.9))
axes[0].loglog(eps_err["t"] + 1, eps_err["mse"], "o-", label="network ε_θ (EMA)")
axes[0].loglog(eps_err["t"] + 1, eps_err["identity_mse"], "s--", label="trivial ε̂ = x_t")
axes[0].set_xlabel("t + 1"), axes[0].set_ylabel("mean squared ε-error"), axes[0].legend()
axes[1].loglog(eps_err["t"] + 1, eps_err["x0_mse"] ** 0.5, "o-", color="C2")
axes[1].set_xlabel("t + 1"), axes[1].set_ylabel("implied RMS error of x̂_0")
fig.suptitle(f"ε-prediction error by timestep ({tm.data.label}, {eps_error_images} held-out images)")
fig.tight_layout()
art.save_figure(fig, "eps_error")
top = -1  # t = T − 1
print(f"t = {T - 1}: network {eps_err['mse'][top]:.2e}, trivial {eps_err['identity_mse'][top]:.2e}, "
      f"implied x̂_0 RMS error {eps_err['x0_mse'][top] ** 0.5:.2f}")
art.number("EpsMseTop", report.latex_sci(eps_err["mse"][top]), escape=False)
art.number("EpsMseTopTrivial", report.latex_sci(eps_err["identity_mse"][top]), escape=False)
art.number("EpsXzeroRmsTop", eps_err["x0_mse"][top] ** 0.5, "{:.1f}")
art.number("EpsErrorImages", eps_error_images, "{:d}")

# %% [markdown]
# ## 2. Network width and depth (§4.4.2)
# Each variant overrides the conditional model's config and is trained for the same number of steps with
# the same batch, then sampled (ancestral, respaced to the profile's quality step count) and scored.

# %%
q_steps = min(50, T, quality_max_steps)
vrows, vres = [], {}
for name, overrides in variants.items():
    spec_v = experiments.with_overrides(cond, {**overrides, "train.total_steps": int(variant_steps),
                                               "train.batch_size": int(variant_batch), "train.sample_every": [],
                                               "train.warmup_steps": min(200, int(variant_steps) // 4 + 1),
                                               "train.ckpt_every": int(variant_steps)})
    vm = experiments.trained_model(art, spec_v, "cond", producer="06_ablations", kind=f"variant-{name}")
    y = np.arange(variant_samples) % K
    out = experiments.generate(art, vm, variant_samples, sampler="ancestral", steps=q_steps, y=y, seed=seed, tag="variants")
    cfd = classifier_fd(clf, torch.from_numpy(out["images"]), test.images)["cfd"]
    m = vm.cfg.model
    vres[name] = dict(cfd=cfd, loss=vm.summary["ema_loss"], params=vm.summary["params"])
    vrows.append([name, str(m.ch), "(" + ",".join(map(str, m.ch_mult)) + ")", str(m.num_res_blocks),
                  f"{vm.summary['params'] / 1e6:.2f}", f"{vm.summary['ema_loss']:.4f}", f"{cfd:.2f}"])
    print(f"{name:8s}: {vm.summary['params']:,} params, loss {vm.summary['ema_loss']:.4f}, classifier FD {cfd:.2f}")
art.save_table("width_depth", report.booktabs_tabular(
    ["variant", "C", "ch. mult.", "res. blocks", "params (M)", "final loss", "classifier FD"], vrows,
    align="lrlrrrr"), config={"variants": variants, "steps": variant_steps, "batch": variant_batch})
for key, name in (("base", "WidthCfdBase"), ("narrow", "WidthCfdNarrow"), ("shallow", "DepthCfdShallow")):
    art.number(name, vres[key]["cfd"], "{:.2f}") if key in vres else art.number(name, "n/a")

# %% [markdown]
# ## 3. Nearest neighbours (figure 2a)
# Unconditional samples (EMA, ancestral) and their five nearest training images by L2 distance in pixel space
# (images in [−1, 1]); a memorising model would reproduce training images at distance ≈ 0.

# %%
tu = experiments.trained_model(art, uncond, "uncond")
out = experiments.generate(art, tu, nn_samples, sampler="ancestral", steps=q_steps, seed=seed + 3, tag="nn")
idx, dist = experiments.nearest_neighbours(out["images"], tu.data.images, k=5)
panel = np.concatenate([np.concatenate([out["images"][i:i + 1], tu.data.images[idx[i]].numpy()]) for i in range(nn_samples)])
fig, ax = plt.subplots(figsize=(3.6, 0.55 * nn_samples + 0.5))
report.show_images(ax, panel, nrow=6)
ax.set_title("sample | 5 nearest training images (L2)")
art.save_figure(fig, "nearest_neighbours", dataset=tu.data.label, config=uncond)
print(f"nearest-neighbour distances: min {dist[:, 0].min():.2f}, median {np.median(dist[:, 0]):.2f}")
art.number("NNMinDistance", float(dist[:, 0].min()), "{:.2f}", dataset=tu.data.label)

# %% [markdown]
# ## 4. Bits/dim: fixed-large against fixed-small
# The full bound (all T terms, eq. 7) of the unconditional model on held-out images; the ε-network is the
# same, only the reverse variance σ_t² differs. Both use the same noise.

# %%
x_test = experiments.load_data(uncond, "test", tu.cfg).images[:bpd_images]
bres = {}
for var in ("fixed_large", "fixed_small"):
    diff = GaussianDiffusion(tu.diffusion.betas, tu.diffusion.model_mean_type, var, tu.diffusion.loss_type)

    def work(folder, diff=diff):
        dev = next(tu.model.parameters()).device
        x0 = x_test.to(dev).float() / 127.5 - 1
        g = torch.Generator(device=dev).manual_seed(seed)
        b = diff.calc_bpd_loop(tu.model, x0, progress=True, t_batch=max(1, 64 // len(x0)), generator=g)
        return {k: b[k].cpu().numpy() for k in ("total_bpd", "prior_bpd", "vb")}

    r = art.cached({"model": tu.entry.key, "var": var, "n": bpd_images, "seed": seed}, work, kind="bpd",
                   modules=["diffusion.gaussian_diffusion"]).result
    bres[var] = dict(total=r["total_bpd"].mean(), prior=r["prior_bpd"].mean(), l0=r["vb"][:, 0].mean(),
                     mid=r["vb"][:, 1:].sum(1).mean())
    print(f"{var}: {bres[var]['total']:.3f} bits/dim (L_T {bres[var]['prior']:.4f}, L_0 {bres[var]['l0']:.3f})")
brows = [["σ² = β_t (fixed-large)" if v == "fixed_large" else "σ² = β̃_t (fixed-small)", f"{b['total']:.3f}",
          f"{b['prior']:.4f}", f"{b['mid']:.3f}", f"{b['l0']:.3f}"] for v, b in bres.items()]
art.save_table("bpd", report.booktabs_tabular(["reverse variance", "total (bits/dim)", "L_T", "Σ L_(t-1)", "L_0"],
                                              brows, align="lrrrr"), dataset=tu.data.label, config=uncond)
art.number("BpdFixedLarge", bres["fixed_large"]["total"], "{:.2f}", dataset=tu.data.label)
art.number("BpdFixedSmall", bres["fixed_small"]["total"], "{:.2f}", dataset=tu.data.label)

# %% [markdown]
# ## 5. FID / IS (official Inception weights) beside the proxy numbers

# %%
from diffusion.metrics.inception import weights_path  # noqa: E402

if os.path.isfile(weights_path()):
    from diffusion.metrics.fid import fid_from_images
    from diffusion.metrics.inception import inception_features_and_logits, load_inception
    from diffusion.metrics.inception_score import inception_score

    net = load_inception(allow_download=False)
    xs = torch.from_numpy(res["ddim", q_steps]["images"] if ("ddim", q_steps) in res else out["images"])
    fid = fid_from_images(xs, test, net)
    is_mean, is_std = inception_score(inception_features_and_logits(xs, net)[1])
    fid_text, is_text = f"{fid:.2f}", f"{is_mean:.2f} ± {is_std:.2f}"
    art.number("FIDStatus", f"FID {fid:.2f} from {len(xs)} samples")
else:
    fid_text = is_text = "unavailable: Inception weights not obtainable offline"
    art.number("FIDStatus", fid_text)
key50 = ("ddim", q_steps)
mrows = [["FID (Inception, official weights)", fid_text], ["Inception Score", is_text],
         [f"classifier FD (DDIM {q_steps} steps, n = {res[key50]['n']})" if key50 in res else "classifier FD",
          f"{res[key50]['cfd']:.2f}" if key50 in res else "n/a"],
         ["conditional accuracy, no guidance (%)", f"{res[key50]['acc']:.1f}" if key50 in res else "n/a"],
         ["proxy classifier held-out accuracy (%)", f"{100 * clf.accuracy:.1f}"],
         ["NLL bound, fixed-large (bits/dim)", f"{bres['fixed_large']['total']:.3f}"]]
art.save_table("metrics_summary", report.booktabs_tabular(["metric", "value"], mrows, align="ll"))
