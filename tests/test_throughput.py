"""benchmarks/throughput.py at its --tiny size on the CPU: it runs, writes the JSON it promises, its ratios
are the ratios of its own figures, and it works without diffusers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(autouse=True)
def keep_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_tiny_cpu_run_writes_consistent_json(bench, tmp_path, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "t.json"
    rc = bench.main(["--tiny", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    r = json.loads(out.read_text())
    for key in ("device", "torch", "diffusers", "git_commit", "source_sha256", "params", "train", "sample",
                "sampler", "ratios", "checks", "config"):
        assert key in r, key
    assert r["torch"] == torch.__version__ and r["diffusers"]
    # The same layout in both libraries: identical parameter counts.
    assert r["params"]["ours"] == r["params"]["diffusers"] > 0
    assert set(r["train"]) == {"diffusers_bf16_eager", "ours_fp32_eager", "ours_bf16_eager", "ours_bf16_cl"}
    assert set(r["sample"]) == {"diffusers_bf16_eager", "ours_bf16_cl_eager", "ours_bf16_cl_graph"}
    base = r["train"]["diffusers_bf16_eager"]["images_per_s"]
    for name, v in r["train"].items():
        assert v["images_per_s"] == pytest.approx(r["batch"] * 1e3 / v["ms_per_step"])
        assert len(v["ms_all"]) == r["repeats"] and v["ms_per_step"] == pytest.approx(sorted(v["ms_all"])[
            len(v["ms_all"]) // 2] if len(v["ms_all"]) % 2 else sum(sorted(v["ms_all"])[len(v["ms_all"]) // 2 - 1:
                                                                              len(v["ms_all"]) // 2 + 1]) / 2)
        if not name.startswith("diffusers"):
            assert r["ratios"]["train"][name] == pytest.approx(v["images_per_s"] / base)
        assert v["mean_loss"] == v["mean_loss"] and 0.1 < v["mean_loss"] < 10  # finite, about E‖ε‖²/d = 1
    sbase = r["sample"]["diffusers_bf16_eager"]["image_steps_per_s"]
    for name, v in r["sample"].items():
        if not name.startswith("diffusers"):
            assert r["ratios"]["sample"][name] == pytest.approx(v["image_steps_per_s"] / sbase)
    assert r["sample"]["ours_bf16_cl_graph"]["graphed"] is False  # CPU: the eager fallback
    assert set(r["sampler"]) == {"ddim_eager", "ddim_cuda_graph"}
    assert r["checks"] and all(c["pass"] for c in r["checks"])
    assert not r["errors"]
    assert "training, batch 4" in printed and "sampling, batch 4" in printed and "checks:" in printed


def test_runs_without_diffusers(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    out = tmp_path / "nodiff.json"
    rc = bench.main(["--tiny", "--device", "cpu", "--out", str(out), "--train-variants",
                     "diffusers_bf16_eager,ours_bf16_eager", "--sample-variants", "diffusers_bf16_eager",
                     "--sampler-steps", "0", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "diffusers is not available" in printed
    r = json.loads(out.read_text())
    assert r["diffusers"] is None and "diffusers" in r["diffusers_missing"]
    assert set(r["train"]) == {"ours_bf16_eager"} and r["ratios"]["train"] == {}
    assert "train/diffusers_bf16_eager" in r["skipped"] and "sample/diffusers_bf16_eager" in r["skipped"]


def test_budget_skips_compiled_variants(bench, tmp_path):
    args = bench.parse_args(["--tiny", "--device", "cpu", "--budget-s", "1"])
    b = bench.Bench(args)
    assert "time budget" in b.skip_reason("ours_bf16_cl_compile_model")
    assert b.skip_reason("ours_bf16_eager") is None


def test_bad_options(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--train-variants", "ours_fp64"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "tpu"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    args = bench.parse_args(["--tiny", "--device", "cpu"])
    assert all("compile" not in n for n in args.train_variants + args.sample_variants)
    assert (args.batch, args.sample_batch) == (4, 4)
    full = bench.parse_args(["--device", "cpu"])
    assert (full.batch, full.sample_batch) == (128, 500)


def test_diffusers_layout_matches_the_cifar10_unet(bench):
    diffusers = pytest.importorskip("diffusers")
    model = bench.build_diffusers(diffusers, bench.FULL)
    assert bench.count_params(model) == bench.CIFAR10_PARAMS == bench.count_params(bench.build_ours(bench.FULL))
    assert model.unet.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert model.unet.config.up_block_types == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")


@pytest.mark.slow
def test_gpu_bench_script_logic_on_cpu(tmp_path):
    """benchmarks/gpu_bench.sh end to end with the CPU substituted (--device cpu --tiny, compiled variants cut
    by --budget-s 0): wheel install (when .whl/ exists), preflight, JSON and log in $OUT."""
    import os
    import subprocess

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site"),
           "BENCH_COMMIT": "test-commit"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), "--device", "cpu", "--tiny", "--batch", "2",
         "--sample-batch", "2", "--repeats", "1", "--warmup", "1", "--inner", "1", "--sample-inner", "1",
         "--sampler-steps", "1", "--budget-s", "0", "--train-variants", "ours_bf16_cl,ours_bf16_cl_compile_model",
         "--sample-variants", "ours_bf16_cl_graph,ours_bf16_cl_compiled"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "throughput.json").read_text())
    assert r["git_commit"] == "test-commit"
    assert set(r["train"]) == {"ours_bf16_cl"} and "train/ours_bf16_cl_compile_model" in r["skipped"]
    assert "sample/ours_bf16_cl_compiled" in r["skipped"]
    log = (tmp_path / "out" / "throughput.log").read_text()
    assert "checks:" in log and "total" in log


def test_cpu_against_diffusers_smoke_run(tmp_path, capsys):
    """benchmarks/cpu_vs_diffusers.py: both networks compute the same function, ratios are to diffusers."""
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("cpu_vs_diffusers", ROOT / "benchmarks" / "cpu_vs_diffusers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    assert mod.main(["--batch", "2", "--repeats", "2", "--inner", "1", "--no-compile", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["image_calls_per_s"]) == {"diffusers_eager", "ours_eager"}
    assert r["ratio_to_diffusers_eager"]["diffusers_eager"] == 1.0
    assert r["rel_err_to_ours_eager"]["diffusers_eager"] < 1e-4 and r["ch"] == 32
    assert "x1.00 vs diffusers eager" in capsys.readouterr().out
