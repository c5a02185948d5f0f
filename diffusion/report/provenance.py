"""Where an artefact came from: git commit (and whether the sources differed from it), device, torch
version; JSON-safe values for the records."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.report.paths import PROFILES, repo_root

RUN_OUTPUTS = ("build", "cache", *(f"figures/{p}" for p in PROFILES))
"""What runs write (repository-relative): never counted as a difference of the sources. No run reads
another profile's figures, so every ``figures/<profile>/`` is an output."""

COMMIT_ENV, DIRTY_ENV = "DDPM_SOURCE_COMMIT", "DDPM_SOURCE_DIRTY"
"""Set by ``tools/make_figures.py`` to the state it found as the run began; the notebooks record that."""


def source_state(root: Path | None = None, outputs: Sequence[str] = RUN_OUTPUTS) -> dict:
    """``{"commit", "dirty", "changed"}`` of the checkout at ``root``.

    ``commit`` is ``HEAD``'s hash; ``changed`` lists the paths (tracked files modified, added or deleted,
    and untracked files that ``.gitignore`` does not exclude) that differ from it outside ``outputs``;
    ``dirty`` is whether there are any. Outside a git checkout the sources cannot be tied to a commit:
    ``commit`` is ``"unknown (...)"`` and ``dirty`` is True.
    """
    root = Path(root or repo_root())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": "unknown (not a git checkout with a commit)", "dirty": True, "changed": []}
        spec = ["--", "."] + [f":(exclude){o}" for o in outputs]
        status = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all", *spec],
                                cwd=root, capture_output=True, text=True, timeout=60)
        if status.returncode != 0:
            return {"commit": head.stdout.strip(), "dirty": True, "changed": [status.stderr.strip()]}
    except (OSError, subprocess.SubprocessError) as err:
        return {"commit": f"unknown ({err})", "dirty": True, "changed": []}
    changed, records = [], status.stdout.split("\0")
    i = 0
    while i < len(records):
        rec = records[i]
        if rec:
            changed.append(rec[3:])
            if rec[0] in "RC":  # a rename or copy is followed by its source path
                i += 1
        i += 1
    return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed": changed}


def run_source_state(root: Path | None = None) -> dict:
    """The state recorded in provenance: what ``tools/make_figures.py`` found as the run began (from
    ``$DDPM_SOURCE_COMMIT`` / ``$DDPM_SOURCE_DIRTY``), else :func:`source_state` now (interactive runs)."""
    if os.environ.get(COMMIT_ENV):
        return {"commit": os.environ[COMMIT_ENV], "dirty": os.environ.get(DIRTY_ENV, "1") != "0", "changed": []}
    return source_state(root)


def commit_label(state: Mapping) -> str:
    """A state's commit hash with ``-dirty`` appended when the sources differed from it."""
    unknown = state["commit"].startswith("unknown")
    return state["commit"] + ("-dirty" if state["dirty"] and not unknown else "")


def git_commit(root: Path | None = None) -> str:
    """The checkout's commit hash, with ``-dirty`` when the sources differ from it (see :func:`source_state`)."""
    return commit_label(source_state(root))


def device_name() -> str:
    """The CUDA device's name when one is used, else the CPU model from /proc/cpuinfo (plus core count)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def torch_version() -> str:
    """``torch.__version__`` (``not installed`` without torch)."""
    try:
        import torch

        return str(torch.__version__)
    except ImportError:
        return "not installed"


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return jsonable(asdict(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


