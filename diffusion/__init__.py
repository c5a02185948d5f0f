"""Denoising diffusion probabilistic models: the companion package of the thesis."""
