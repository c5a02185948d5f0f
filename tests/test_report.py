"""Tests of diffusion.report: writers, smoke marking, numbers syntax, provenance and the cache key."""

import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diffusion import report  # noqa: E402
from diffusion.report import cache as report_cache  # noqa: E402


@pytest.fixture
def fake_pkg(tmp_path, monkeypatch):
    """A throwaway copy of a tiny ``diffusion`` package, so sources can be edited safely."""
    pkg = tmp_path / "diffusion"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "a.py").write_text("from diffusion.b import f\nX = 1\n")
    (pkg / "b.py").write_text("def f():\n    return 2\n")
    (pkg / "c.py").write_text("Y = 3\n")
    (pkg / "report").mkdir()
    (pkg / "report" / "__init__.py").write_text("# writers\n")
    monkeypatch.setattr(report_cache, "PACKAGE_DIR", pkg)
    return pkg


def _fig():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("step")
    return fig


def test_source_digest_follows_imports(fake_pkg):
    d_all, d_a = report.source_digest(), report.source_digest(["diffusion.a"])
    (fake_pkg / "c.py").write_text("Y = 4\n")  # a does not import c
    assert report.source_digest(["diffusion.a"]) == d_a
    assert report.source_digest() != d_all
    (fake_pkg / "b.py").write_text("def f():\n    return 3\n")  # imported by a
    assert report.source_digest(["diffusion.a"]) != d_a
    d_all = report.source_digest()
    (fake_pkg / "report" / "__init__.py").write_text("# restyled\n")  # never changes a cached result
    assert report.source_digest() == d_all
    (fake_pkg / "a.py").write_text("from diffusion.b import f\nfrom diffusion import report\nX = 1\n")
    d_a = report.source_digest(["diffusion.a"])
    (fake_pkg / "report" / "__init__.py").write_text("# restyled again\n")  # imported, still not hashed
    assert report.source_digest(["diffusion.a"]) == d_a
    with pytest.raises(ValueError, match="modules"):
        report.source_digest(["diffusion.nope"])


def test_source_digest_hashes_code_not_comments_or_docstrings(fake_pkg):
    b = fake_pkg / "b.py"
    b.write_text('"""Module b."""\n\n\ndef f():\n    """Two."""\n    return 2  # the answer\n')
    d = report.source_digest(["diffusion.b"])
    b.write_text('"""Module b, reworded."""\n\ndef f():\n    """Returns two."""\n    # a comment\n    return (2)\n')
    assert report.source_digest(["diffusion.b"]) == d  # docstrings, comments, layout
    for code in ('def f():\n    return 3\n', 'def g():\n    return 2\n', 'def f():\n    "Two."\n    return "2"\n',
                 'def f():\n    return 2\n\n\nclass C:\n    """doc"""\n'):
        b.write_text(code)  # a constant, a name, a type, a new class
        assert report.source_digest(["diffusion.b"]) != d, code


def test_cached_reuses_and_invalidates(fake_pkg, tmp_path):
    calls = []

    def work(d):
        calls.append(d)
        (d / "ckpt.bin").write_bytes(b"x")
        return {"loss": 0.5, "samples": np.arange(6.0).reshape(2, 3)}

    kw = dict(kind="train", notebook="04_training", profile="smoke", cache_root=tmp_path / "cache",
              modules=["diffusion.a"])
    first = report.cached({"config": {"steps": 10}, "data": "abc"}, work, **kw)
    assert not first.hit and first.result["loss"] == 0.5 and (first.path / "ckpt.bin").is_file()
    again = report.cached({"config": {"steps": 10}, "data": "abc"}, work, **kw)
    assert again.hit and len(calls) == 1 and again.path == first.path
    np.testing.assert_array_equal(again.result["samples"], np.arange(6.0).reshape(2, 3))
    # a changed config, data digest, notebook or source each give a new entry
    assert not report.cached({"config": {"steps": 11}, "data": "abc"}, work, **kw).hit
    assert not report.cached({"config": {"steps": 10}, "data": "abd"}, work, **kw).hit
    assert not report.cached({"config": {"steps": 10}, "data": "abc"}, work,
                             **{**kw, "notebook": "05_guidance"}).hit
    (fake_pkg / "b.py").write_text("def f():\n    return 5\n")
    assert not report.cached({"config": {"steps": 10}, "data": "abc"}, work, **kw).hit
    assert len(calls) == 5
    assert not list((tmp_path / "cache").rglob("*.partial"))


def test_cached_interrupted_leaves_no_entry(fake_pkg, tmp_path):
    def boom(d):
        (d / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    kw = dict(kind="train", notebook="n", profile="smoke", cache_root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        report.cached({"a": 1}, boom, **kw)
    seen = []
    entry = report.cached({"a": 1}, lambda d: seen.append(sorted(p.name for p in d.iterdir())) or {}, **kw)
    assert not entry.hit and "half.bin" in seen[0]  # the rerun gets the partial folder to resume from
    with pytest.raises(ValueError, match="kind"):
        report.cached({"a": 1}, lambda d: {}, kind="a/b", notebook="n", profile="smoke", cache_root=tmp_path)
    with pytest.raises(ValueError, match="profile"):
        report.cached({"a": 1}, lambda d: {}, kind="k", notebook="n", profile="huge", cache_root=tmp_path)


def test_data_digest_sensitive_to_pixels_and_labels():
    x = np.zeros((2, 1, 4, 4), np.uint8)
    y = np.array([0, 1])
    d = report.data_digest(x, y, "mnist5k")
    x2 = x.copy()
    x2[1, 0, 3, 3] = 1
    assert report.data_digest(x2, y, "mnist5k") != d
    assert report.data_digest(x, y[::-1].copy(), "mnist5k") != d
    assert report.data_digest(x, y, "mnist5k") == d


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_figure_table_numbers_provenance(tmp_path, profile):
    art = report.Artefacts(profile, "02_elbo_checks", tmp_path, dataset="toy", config={"T": 10}, seed=3)
    art.save_figure(_fig(), "elbo_weights")
    pdf, png = tmp_path / "elbo_weights.pdf", tmp_path / "elbo_weights.png"
    assert pdf.read_bytes().startswith(b"%PDF") and png.read_bytes().startswith(b"\x89PNG")

    tab = report.booktabs_tabular(["w", "acc (%)"], [[0, 12.5], [3, 97.0]], align="rr")
    art.save_table("guidance", tab)
    written = (tmp_path / "tables" / "guidance.tex").read_text()
    assert r"\toprule" in written and r"\bottomrule" in written and r"\begin{table}" not in written
    assert (r"\multicolumn{2}{c}{\textbf{SMOKE TEST" in written) == (profile == "smoke")
    assert r"acc (\%)" in written

    art.number("ToyBoundGap", 0.0123, "{:.3f}")
    art.number("FIDStatus", "unavailable: weights_missing 100%")
    lines = (tmp_path / "numbers" / "02_elbo_checks.tex").read_text().splitlines()
    cmds = [ln for ln in lines if not ln.startswith("%")]
    assert cmds == [r"\newcommand{\ToyBoundGap}{0.012}",
                    r"\newcommand{\FIDStatus}{unavailable: weights\_missing 100\%}"]
    for ln in cmds:  # braces balanced, one command per line
        assert re.fullmatch(r"\\newcommand\{\\[A-Za-z]+\}\{.*\}", ln) and ln.count("{") - ln.count(r"\{") == \
            ln.count("}") - ln.count(r"\}")

    prov = json.loads((tmp_path / "provenance" / "02_elbo_checks.json").read_text())
    names = {(e["artefact"], e["kind"]) for e in prov}
    assert names == {("elbo_weights", "figure"), ("guidance", "table"), ("ToyBoundGap", "number"),
                     ("FIDStatus", "number")}
    for e in prov:
        for field in ("notebook", "profile", "dataset", "config", "seed", "git_commit", "device",
                      "torch_version", "wall_time_s", "created_utc"):
            assert field in e, field
        assert e["notebook"] == "02_elbo_checks" and e["profile"] == profile and e["seed"] == 3
        assert e["config"] == {"T": 10} and e["dataset"] == "toy" and e["wall_time_s"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["created_utc"])


def test_smoke_watermark_is_drawn(tmp_path):
    drawn = {}
    for profile in ("smoke", "quick"):
        art = report.Artefacts(profile, "00_toy_2d", tmp_path / profile)
        fig = _fig()
        art.save_figure(fig, "toy_2d", close=False)
        drawn[profile] = [t.get_text() for t in fig.texts]
        plt.close(fig)
        img = plt.imread(tmp_path / profile / "toy_2d.png")
        drawn[profile + "_red"] = int(((img[..., 0] > 0.8) & (img[..., 1] < 0.7) & (img[..., 2] < 0.7)).sum())
    assert drawn["smoke"] == ["SMOKE TEST"] and drawn["quick"] == []
    assert drawn["smoke_red"] > 50 and drawn["quick_red"] == 0


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        report.Artefacts("medium", "x", tmp_path)
    art = report.Artefacts("quick", "x", tmp_path)
    with pytest.raises(ValueError, match="letters only"):
        art.number("Cfd1", 1.0)
    with pytest.raises(ValueError, match="finite"):
        art.number("Cfd", float("nan"))
    with pytest.raises(ValueError, match="booktabs"):
        art.save_table("t", "a & b")
    with pytest.raises(ValueError, match="float"):
        art.save_table("t", "\\begin{table}\\begin{tabular}{ll}\\toprule\\end{tabular}\\end{table}")
    with pytest.raises(ValueError, match="align"):
        report.booktabs_tabular(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="cells"):
        report.booktabs_tabular(["a", "b"], [[1]])


def test_column_count_and_grid():
    assert report.latex._count_columns("l*{3}{r}p{2cm}@{}c|S") == 7
    g = report.image_grid(np.stack([np.full((1, 2, 2), -1.0), np.full((1, 2, 2), 1.0)] * 2), nrow=3, pad=1)
    assert g.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert g[1, 1, 0] == 0.0 and g[1, 4, 0] == 1.0 and g[4, 7, 0] == 1.0  # blank cell keeps pad value


def test_environment_fields():
    assert report.device_name()
    assert report.git_commit()
    assert report.torch_version()


def test_show_images_accepts_uint8_and_labels_rows():
    fig, ax = plt.subplots()
    imgs = np.zeros((4, 1, 6, 6), np.uint8)
    imgs[1] = 255
    report.show_images(ax, imgs, nrow=2, row_labels=["a", "b"])
    shown = ax.images[0].get_array()
    assert shown.shape == (2 * 7 + 1, 2 * 7 + 1) and shown[1, 1] == 0.0 and shown[1, 8] == 1.0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    plt.close(fig)


def test_latex_sci():
    from diffusion.report import latex_sci

    assert latex_sci(0.0024) == r"$2.4\times10^{-3}$"
    assert latex_sci(3.25, 2) == "$3.25$" and latex_sci(0) == "$0$"
    assert latex_sci(-12345, 2) == r"$-1.23\times10^{4}$"
    with pytest.raises(ValueError):
        latex_sci(float("nan"))
