"""Progress bars: widgets in JupyterLab, plain text in a terminal and in notebooks run headless.

``tqdm.auto`` draws a widget whenever it runs in a Jupyter kernel with ipywidgets installed, also under
papermill, where the widget is never rendered and the executed notebook keeps no readable progress.
``tools/make_figures.py`` therefore sets ``DDPM_PROGRESS=text``, which selects the plain-text bar.
"""

import os

if os.environ.get("DDPM_PROGRESS", "auto") == "text":
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
