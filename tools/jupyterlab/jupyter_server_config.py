"""Jupyter server settings of the project; `make setup` installs this file as
``$(VENV)/etc/jupyter/jupyter_server_config.py`` (beside ``share/jupyter/lab/settings/overrides.json``, which
makes Jupytext's notebook viewer the default for ``.py`` files).

The notebooks are Jupytext ``.py`` files whose header keeps only the kernelspec and the text format
(``jupytext.toml``), so a notebook opened from its ``.py`` has no ``language_info``. JupyterLab then adds an
empty one and, once the kernel answers, the kernel's: the notebook shows as modified without any edit. The
contents manager below gives such a notebook the ``language_info`` that ipykernel reports for this very
interpreter, which is the one the project's ``ddpm-thesis`` kernel runs, so opening changes nothing. The
metadata filter of ``jupytext.toml`` keeps it out of the ``.py`` when the notebook is saved.
"""

from ipykernel.ipkernel import IPythonKernel
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class


class ProjectContentsManager(build_async_jupytext_contents_manager_class(AsyncLargeFileManager)):
    """Jupytext's contents manager that completes a Python notebook's missing ``language_info``."""

    async def get(self, path, content=True, type=None, format=None, **kwargs):
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if content and model.get("type") == "notebook" and model.get("content") is not None:
            metadata = model["content"].metadata
            if "language_info" not in metadata and metadata.get("kernelspec", {}).get("language") == "python":
                metadata["language_info"] = dict(IPythonKernel.language_info)
        return model


c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)
c.ServerApp.contents_manager_class = ProjectContentsManager
