"""What the notebooks write and how, one concept per module:

- :mod:`~diffusion.report.style`: the figure style (print sizes) and image grids;
- :mod:`~diffusion.report.labels`: Chinese display names of datasets and samplers;
- :mod:`~diffusion.report.smoothing`: the centred smoother of noisy curves (the training loss);
- :mod:`~diffusion.report.latex`: LaTeX escaping and booktabs tabulars;
- :mod:`~diffusion.report.trained_models`: the settings of trained models beside their designs (a table's rows);
- :mod:`~diffusion.report.provenance`: commit, device and torch version of an artefact;
- :mod:`~diffusion.report.cache`: the content-keyed cache of expensive work;
- :mod:`~diffusion.report.artefacts`: :class:`Artefacts`, the writer of figures, tables, numbers and provenance.

The thesis reads only what :class:`Artefacts` writes (see ``docs/artefacts.md``).
"""

from diffusion.report.artefacts import Artefacts
from diffusion.report.cache import PROGRESS, CacheEntry, cache_key, cached, data_digest, source_digest
from diffusion.report.labels import SAMPLER_NAMES_ZH, class_name_zh, dataset_label_zh, sampler_name_zh, toy_label_zh
from diffusion.report.latex import SMOKE_TEXT, booktabs_tabular, escape_latex, latex_sci, mark_smoke_table
from diffusion.report.paths import PROFILES, repo_root
from diffusion.report.provenance import device_name, git_commit, torch_version
from diffusion.report.smoothing import centred_moving_average
from diffusion.report.style import FULL_WIDTH_IN, HALF_WIDTH_IN, grid_columns, image_grid, log_axis, set_style, show_images

__all__ = [
    "FULL_WIDTH_IN", "HALF_WIDTH_IN", "PROFILES", "PROGRESS", "SAMPLER_NAMES_ZH", "SMOKE_TEXT", "Artefacts", "CacheEntry", "booktabs_tabular", "cache_key", "cached", "centred_moving_average", "class_name_zh", "data_digest", "dataset_label_zh",
    "device_name", "escape_latex", "git_commit", "grid_columns", "image_grid", "latex_sci", "log_axis", "mark_smoke_table", "repo_root", "sampler_name_zh", "toy_label_zh",
    "set_style", "show_images", "source_digest", "torch_version",
]
