"""The repository root and the profile names every writer shares."""

from __future__ import annotations

from pathlib import Path

PROFILES = ("smoke", "quick", "long", "cpu", "gpu", "full")
"""Profile names, shortest first; each has its own ``figures/<profile>/`` folder."""

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""The ``diffusion`` package folder."""


def repo_root() -> Path:
    """The repository root (the folder holding the ``diffusion`` package)."""
    return PACKAGE_DIR.parent


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
