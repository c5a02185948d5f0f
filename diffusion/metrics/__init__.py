"""Evaluation of trained diffusion models (section 4.1.3).

One concept per module:

- :mod:`.images` — converting samples to the uint8 pixels a saved PNG would hold;
- :mod:`.cache` — the on-disk cache (``$DDPM_CACHE`` or ``<repo>/cache``) for statistics and classifiers, with
  keys that cover the computing code, the torch version, the data and the weights;
- :mod:`.inception` — pytorch-fid's FID Inception network with the official, hash-verified weights only;
- :mod:`.fid` — activation statistics, the Fréchet distance, FID and cached reference statistics;
- :mod:`.inception_score` — the Inception Score from the same network's bias-free logits (improved-gan);
- :mod:`.classifier` — the offline proxy: a small classifier, "classifier FD", conditional accuracy,
  diversity (never called FID);
- :mod:`.kid` — the classifier KID: unbiased MMD² with the cubic polynomial kernel on the proxy features;
- :mod:`.intervals` — 95 % intervals of the proxy metrics and of their differences (jackknife for FD and KID,
  percentile bootstrap for means such as the accuracy);
- :mod:`.energy` — the energy distance between point sets (the 2-D toy's two-sample check);
- :mod:`.nll` — negative log-likelihood in bits/dim from the variational bound, eq. (7);
- :mod:`.neighbours` — pixel-space nearest neighbours (memorisation check, figure 2a);
- :mod:`.timing` — sampling time per image (table 5);
- :mod:`.evaluate` — :func:`evaluate`, sampling a model and computing the requested metrics.

Submodules are imported on use (``from diffusion.metrics.fid import fid_from_images``) so that
importing the package stays cheap.
"""
