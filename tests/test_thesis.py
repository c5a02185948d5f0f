"""The thesis build (tools/build_thesis.py, thesis/): input checks, generated TeX, and the PDF itself.

The PDF tests build the thesis from ``figures/smoke/`` into a temporary folder and inspect it with
poppler (page count, chapter titles in the text, no "??", every font embedded, equations (1)-(18)).
They are skipped when the TeX tools are absent or ``make figures PROFILE=smoke`` has not been run.
The other tests exercise the build script's checks on small fakes and need no TeX.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "build_thesis.py"
SMOKE = REPO / "figures" / "smoke"

_spec = importlib.util.spec_from_file_location("build_thesis", SCRIPT)
build_thesis = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_thesis)

CHAPTER_TITLES = ["摘要", "Abstract", "目录", "引言", "扩散生成模型的数学原理与理论推导",
                  "图像生成模型的设计与算法实现", "实验结果与分析", "总结与展望", "全文总结",
                  "存在不足与未来改进方向", "参考文献", "产物来源记录"]


# ------------------------------------------------------------------------------- script logic, no TeX
def test_contract_lists_every_artefact_with_its_notebook():
    figs, tabs, nums = build_thesis.parse_contract(REPO / "docs" / "artefacts.md")
    assert figs["loss_curve"] == "04_training"
    assert tabs["hparams"] == "03_unet"
    assert nums["CondAccWThree"] == "05_guidance"
    assert nums["ToyBoundGap"] == "02_elbo_checks"
    assert nums["ProfileName"] == "04_training"
    assert nums["UncondBatchSize"] == "04_training"  # a wrapped line continues its notebook's list
    assert nums["StepsCfdFifty"] == "06_ablations" and nums["CfdWOne"] == "05_guidance"
    assert len(nums) == 43


def test_thesis_uses_only_contract_artefacts_and_all_figures():
    figs, tabs, nums = build_thesis.parse_contract(REPO / "docs" / "artefacts.md")
    used_figs, used_tabs, macros = build_thesis.used_artefacts(build_thesis.thesis_sources(REPO / "thesis"))
    assert set(used_figs) <= set(figs) and set(used_tabs) <= set(tabs)
    assert set(used_figs) == set(figs), "every contract figure should appear in the thesis"
    assert set(nums) <= macros | build_thesis.DERIVED_FROM, "every contract number should be used"


def _fake_profile(root: Path, drop: str | None = None) -> Path:
    """Minimal fake artefacts for the checks (plain text; never compiled)."""
    figs, tabs, nums = build_thesis.parse_contract(REPO / "docs" / "artefacts.md")
    d = root / "smoke"
    (d / "tables").mkdir(parents=True)
    for name in figs:
        (d / f"{name}.pdf").write_bytes(b"%PDF-1.4\n")
    for name in tabs:
        (d / "tables" / f"{name}.tex").write_text("\\begin{tabular}{l}x\\end{tabular}\n")
    (d / "numbers.tex").write_text("".join(f"\\newcommand{{\\{m}}}{{1}}\n" for m in nums if m != drop))
    (d / "provenance.json").write_text(json.dumps({"loss_curve": {"notebook": "04_training"}}))
    if drop and (d / f"{drop}.pdf").exists():
        (d / f"{drop}.pdf").unlink()
    if drop and (d / "tables" / f"{drop}.tex").exists():
        (d / "tables" / f"{drop}.tex").unlink()
    return d


@pytest.mark.parametrize("drop, notebook", [("cond_grid", "05_guidance"), ("bpd", "06_ablations"),
                                            ("KLMaxRelErr", "02_elbo_checks")])
def test_missing_artefact_fails_naming_its_notebook(tmp_path, drop, notebook):
    fig_dir = _fake_profile(tmp_path, drop=drop)
    contract = build_thesis.parse_contract(REPO / "docs" / "artefacts.md")
    with pytest.raises(build_thesis.BuildError) as err:
        build_thesis.check_inputs(fig_dir, contract, build_thesis.thesis_sources(REPO / "thesis"))
    assert drop in str(err.value) and f"notebooks/{notebook}.py" in str(err.value)


def test_complete_fake_profile_passes_checks(tmp_path):
    fig_dir = _fake_profile(tmp_path)
    contract = build_thesis.parse_contract(REPO / "docs" / "artefacts.md")
    figs, tabs = build_thesis.check_inputs(fig_dir, contract, build_thesis.thesis_sources(REPO / "thesis"))
    assert "loss_curve" in figs and "hparams" in tabs


def test_default_profile_is_the_best_present(tmp_path):
    for p in ("smoke", "quick"):
        (tmp_path / p).mkdir()
        (tmp_path / p / "numbers.tex").write_text("")
    assert build_thesis.choose_profile(tmp_path, None) == "quick"
    (tmp_path / "full").mkdir()  # a folder without numbers.tex is not a finished profile
    assert build_thesis.choose_profile(tmp_path, None) == "quick"
    with pytest.raises(build_thesis.BuildError, match="make figures PROFILE=gpu"):
        build_thesis.choose_profile(tmp_path, "gpu")


def test_comparison_words_follow_the_numbers():
    lines = build_thesis.comparison_macros({"CondAccWThree": "93.5", "CondAccWOne": "80.1",
                                             "CfdWThree": "12.0", "CfdWOne": "12.0",
                                             "StepsTimeFull": "8.0", "StepsTimeFifty": "0.4",
                                             "BpdFixedSmall": "n/a", "BpdFixedLarge": "3.1",
                                             "EpsMseTop": r"$2.0\times10^{-3}$",
                                             "EpsMseTopTrivial": r"$3.6\times10^{-5}$",
                                             "CondDatasetLabel": "A", "UncondDatasetLabel": "B"})
    text = "\n".join(lines)
    assert r"\newcommand{\RelAccThreeOne}[2]{#1}" in text
    assert r"\newcommand{\RelCfdThreeOne}[2]{相同}" in text
    assert r"\newcommand{\RelBpd}[2]{无法比较}" in text
    assert r"\newcommand{\RelEpsTop}[2]{#1}" in text  # 2.0e-3 > 3.6e-5, read from report.latex_sci
    assert build_thesis._number(r"$3.6\times10^{-5}$") == 3.6e-5 and build_thesis._number("$7.1$") == 7.1
    assert r"\newcommand{\StepsSpeedup}{20.0}" in text
    assert r"\CondDatasetLabel{} 与 \UncondDatasetLabel" in text


def test_log_check_catches_undefined_references_and_missing_glyphs(tmp_path):
    log = tmp_path / "thesis.log"
    log.write_text("LaTeX Warning: Reference `eq:x' on page 3 undefined on input line 5.\n"
                   "LaTeX Warning: Citation `nobody2020' on page 4 undefined on input line 9.\n"
                   "Missing character: There is no \u03b2 (U+03B2) in font [lmroman10-regular]:mapping=t\n"
                   "ex-text;!\n")
    problems = build_thesis.check_log(log, tmp_path / "none.blg")
    assert any("eq:x" in p for p in problems)
    assert any("nobody2020" in p for p in problems)
    assert any("missing glyph" in p for p in problems)
    log.write_text("Output written on thesis.pdf (40 pages).\n")
    assert build_thesis.check_log(log, tmp_path / "none.blg") == []


def test_provenance_appendix_lists_each_artefact(tmp_path):
    records = {"loss_curve": {"notebook": "04_training", "commit": "abcdef0123456789", "seed": 3,
                              "dataset_label": "MNIST-5k", "device": "cpu", "wall_time": 12.25,
                              "config": {"train": {"batch_size": 64}}, "created": "2025-01-01T00:00:00Z"},
               "tables/hparams.tex": {"notebook": "03_unet"}}
    tex = build_thesis.provenance_tex(records, ["loss_curve"], ["hparams", "bpd"])
    assert "04\\_training" in tex and "abcdef012345" in tex and "12.2 s" in tex
    assert "train.batch\\_size=64" in tex
    assert "03\\_unet" in tex
    assert "bpd] provenance.json 中没有该产物的记录" in tex


def test_tex_escape_and_paths():
    assert build_thesis.tex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    with pytest.raises(build_thesis.BuildError, match="contains characters"):
        build_thesis.tex_path(Path("/tmp/with space"))


# ------------------------------------------------------------------------------------ the PDF itself
_TOOLS = ("xelatex", "latexmk", "biber", "pdftotext", "pdffonts", "pdfinfo")
_missing = [t for t in _TOOLS if shutil.which(t) is None]
needs_pdf = pytest.mark.skipif(
    bool(_missing) or not (SMOKE / "numbers.tex").is_file(),
    reason=(f"TeX/poppler tools missing: {', '.join(_missing)} (make setup installs them)" if _missing
            else "figures/smoke/ not generated yet (run `make figures PROFILE=smoke`)"))


@pytest.fixture(scope="module")
def smoke_pdf(tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("thesis-build")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--profile", "smoke", "--build-dir", str(build_dir),
                           "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return build_dir / "thesis.pdf"


@needs_pdf
@pytest.mark.timeout(600)
def test_pdf_page_count(smoke_pdf):
    info = subprocess.run(["pdfinfo", str(smoke_pdf)], stdout=subprocess.PIPE, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))
    assert 25 <= pages <= 120, pages


@needs_pdf
@pytest.mark.timeout(600)
def test_pdf_text_has_chapters_and_no_unresolved_marks(smoke_pdf):
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(smoke_pdf), "-"], stdout=subprocess.PIPE,
                          text=True).stdout
    squashed = re.sub(r"\s+", "", text)
    for title in CHAPTER_TITLES:
        assert title in squashed, f"chapter title {title!r} not found in the PDF text"
    assert "??" not in text
    assert "SMOKE TEST" in text, "a smoke-profile thesis must carry its marker"


@needs_pdf
@pytest.mark.timeout(600)
def test_pdf_fonts_all_embedded(smoke_pdf):
    out = subprocess.run(["pdffonts", str(smoke_pdf)], stdout=subprocess.PIPE, text=True).stdout
    rows = out.splitlines()[2:]
    assert rows, out
    # columns: name type encoding emb sub uni object ID; "emb" is the 4th field from the right end
    not_embedded = [r for r in rows if r.split()[-5] != "yes"]
    assert not not_embedded, "fonts not embedded:\n" + "\n".join(not_embedded)


@needs_pdf
@pytest.mark.timeout(600)
def test_equations_numbered_one_to_eighteen(smoke_pdf):
    aux = (smoke_pdf.parent / "thesis.aux").read_text(encoding="utf-8")
    numbers = sorted(int(n) for n in re.findall(r"\\newlabel\{eq:[^}]+\}\{\{(\d+)\}", aux))
    assert numbers == list(range(1, 19))
