"""The conda environment mirrors the pinned pip requirements."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(path):
    return {line.split("==")[0].lower(): line.split("==")[1] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def test_environment_yml_matches_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    from_env = {p.split("==")[0].lower(): p.split("==")[1] for p in pip_list}
    from_req = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    assert from_env == from_req
    assert all("==" in p for p in pip_list)
    assert from_req["torch"] == "2.14.1" and from_req["torchvision"] == "0.29.1"
