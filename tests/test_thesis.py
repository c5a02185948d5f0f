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

CHAPTER_TITLES = ["学位论文原创性声明", "学位论文版权使用授权书", "摘要", "Abstract", "目录", "引言",
                  "扩散生成模型的数学原理与理论推导", "图像生成模型的设计与算法实现", "实验结果与分析",
                  "总结与展望", "全文总结", "存在的不足", "未来工作", "参考文献", "图表来源"]
FIGURES = REPO / "figures"
THESIS = REPO / "thesis"
CHECK_SCRIPT = REPO / "tools" / "thesis_check.py"
_check_spec = importlib.util.spec_from_file_location("thesis_check", CHECK_SCRIPT)
thesis_check = importlib.util.module_from_spec(_check_spec)
_check_spec.loader.exec_module(thesis_check)


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
    assert nums["DefaultGuidanceScale"] == nums["GuidanceSteps"] == "05_guidance"


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
    (tmp_path / "long").mkdir()  # the CPU profile of the thesis's results beats quick, not gpu or full
    (tmp_path / "long" / "numbers.tex").write_text("")
    assert build_thesis.choose_profile(tmp_path, None) == "long"
    (tmp_path / "cpu").mkdir()  # the draft's datasets at CPU scale beat the MNIST profiles
    (tmp_path / "cpu" / "numbers.tex").write_text("")
    assert build_thesis.choose_profile(tmp_path, None) == "cpu"
    (tmp_path / "full" / "numbers.tex").write_text("")
    assert build_thesis.choose_profile(tmp_path, None) == "full"


def test_a_thesis_from_other_figures_than_those_just_made_says_so():
    records = {"a": {"git_commit": "d2e662ca80a4feac2e6", "dirty": False},
               "b": {"git_commit": "db37b96aaaaaaaaaaaa", "dirty": True}}
    note = build_thesis.figures_note("long", records, "quick")
    assert note.startswith("note: thesis.pdf shows the committed figures/long (made at commit d2e662ca80, "
                           "db37b96aaa-dirty), not the figures/quick this run just made")
    assert note.endswith("`make thesis PROFILE=quick` builds it from those")
    assert build_thesis.figures_note("quick", records, "quick") is None
    assert build_thesis.figures_note("long", records, None) is None


def test_comparison_words_follow_the_numbers():
    lines = build_thesis.comparison_macros({"CondAccWThree": "93.5", "CondAccWOne": "80.1",
                                             "CfdWThree": "12.0", "CfdWOne": "12.0",
                                             "StepsTimeFull": "8.0", "StepsTimeFifty": "0.4",
                                             "BpdFixedSmall": "n/a", "BpdFixedLarge": "3.1",
                                             "EpsMseTop": r"$2.0\times10^{-3}$",
                                             "EpsMseTopTrivial": r"$3.6\times10^{-5}$",
                                             "CondDatasetLabel": "A", "UncondDatasetLabel": "B"})
    text = "\n".join(lines)
    assert r"\newcommand{\RelAccThreeOne}[3][相同]{#2}" in text
    assert r"\newcommand{\RelCfdThreeOne}[3][相同]{#1}" in text  # equal: the optional word
    assert r"\newcommand{\RelBpd}[3][相同]{无法比较}" in text
    assert r"\newcommand{\RelEpsTop}[3][相同]{#2}" in text  # 2.0e-3 > 3.6e-5, read from report.latex_sci
    assert build_thesis._number(r"$3.6\times10^{-5}$") == 3.6e-5 and build_thesis._number("$7.1$") == 7.1
    assert r"\newcommand{\StepsSpeedup}{20.0}" in text
    assert r"\CondDatasetLabel{} 与 \UncondDatasetLabel" in text
    assert r"\newcommand{\CondDatasetLabelEn}{A}" in text
    english = "\n".join(build_thesis.comparison_macros({"CondDatasetLabel": "CIFAR-10（JPEG q75 有损副本）",
                                                        "UncondDatasetLabel": "MNIST-5k（16×16）"}))
    assert r"\newcommand{\CondDatasetLabelEn}{CIFAR-10 (JPEG q75 copy)}" in english
    assert r"\newcommand{\UncondDatasetLabelEn}{MNIST-5k at 16×16}" in english


@pytest.mark.parametrize("main, other, expected", [
    ("0.20 [0.10, 0.30]", None, "#1"),                     # no other seed recorded: the main run decides
    ("-0.20 [-0.30, -0.10]", None, "#2"),
    ("0.10 [-0.10, 0.30]", None, "#3"),
    ("0.20 [0.10, 0.30]", "0.15 [0.02, 0.28]", "#1"),      # held under the second seed
    ("0.20 [0.10, 0.30]", "0.10 [-0.02, 0.22]", "\\FindingNoted{#3}{\\SeedLostNote}"),  # did not: not a finding, said why
    ("−0.20 [−0.30, −0.10]", "0.10 [0.02, 0.22]", "\\FindingNoted{#3}{\\SeedLostNote}"),  # opposite signs (with the typographic minus)
    ("−0.20 [−0.30, −0.10]", "-0.15 [-0.25, -0.05]", "#2"),  # the typographic minus reads as a minus
    ("0.20 [0.10, 0.30]", "MISSING", "\\FindingNoted{#3}{\\SeedUncheckedNote}"),  # the other run lacks the number: not checked
    ("0.10 [-0.10, 0.30]", "MISSING", "#3"),
])
def test_findings_hold_in_every_training_seed(tmp_path, main, other, expected):
    """\\Finding<X>{above}{below}{neither}: above or below only when every recorded run's interval excludes 0 on
    the same side; the other seed's values are available as \\SeedValue{Name}."""
    fig = tmp_path / "cpu"
    if other is not None:
        (fig / "seeds").mkdir(parents=True)
        body = "" if other == "MISSING" else f"\\newcommand{{\\StepsDdimVsFullKidDiff}}{{{other}}}\n"
        (fig / "seeds" / "train-seed-1.tex").write_text(body + "\\newcommand{\\CondAccWThree}{91.0}\n")
    runs = build_thesis.seed_runs(fig)
    assert list(runs) == ([1] if other is not None else [])
    lines = build_thesis.finding_macros({"StepsDdimVsFullKidDiff": main, "StepsDdimVsFullKidVerdict": "x",
                                         "CondAccWThree": "93.5"}, runs)
    assert f"\\newcommand{{\\FindingStepsDdimVsFullKid}}[3]{{{expected}}}" in lines
    assert not any("FindingStepsDdimVsFullKidVerdict" in line for line in lines)
    more = build_thesis.finding_macros({"AccDiffOneZero": "4.0 [2.0, 6.0]", "StageKidLastDiff": "n/a（只有一个训练阶段）"}, {})
    assert "\\newcommand{\\FindingAccDiffOneZero}[3]{#1}" in more and "\\newcommand{\\FindingStageKidLast}[3]{#3}" in more
    assert ("\\newcommand{\\IfSeedRuns}[2]{#1}" in lines) == (other is not None)
    assert any("seedvalue@CondAccWThree\\endcsname{91.0}" in line for line in lines) == (other is not None)


@pytest.mark.parametrize("main, other, shift", [
    ("0.3720 [0.3266, 0.4174]", "0.4011 [0.3550, 0.4470]", "+0.0291"),  # the main value's decimals
    ("48.40 [44.20, 52.60]", "45.2 [41.0, 49.4]", "−3.20"),             # other − main, typographic minus
    ("−0.289 [−0.457, −0.121]", "-0.300 [-0.5, -0.1]", "−0.011"),
    ("1,440", "1,452", "+12"),
    ("3.52", "3.52", "0.00"),
    ("n/a（只有一个训练阶段）", "0.1 [0.0, 0.2]", None),
])
def test_seed_shift_is_other_minus_main(main, other, shift):
    assert build_thesis.seed_shift(main, other) == shift


def test_seed_table_macros_count_the_differences_that_kept_their_side():
    """\\SeedHeld{X} says whether a difference stayed on its side of 0 (both containing 0 counts as kept);
    \\SeedHeldCount of \\SeedDiffCount differences did; a number that is not a difference has no verdict."""
    main = {"AccDiffThreeOne": "28.0 [23.8, 32.2]", "StepsDpmVsFullKidDiff": "0.0467 [0.0002, 0.0932]",
            "WidthNarrowKidDiff": "0.02 [-0.02, 0.06]", "KidWThreeCI": "0.3720 [0.3266, 0.4174]"}
    other = {"AccDiffThreeOne": "25.0 [21.0, 29.0]", "StepsDpmVsFullKidDiff": "0.0310 [-0.0150, 0.0770]",
             "WidthNarrowKidDiff": "-0.01 [-0.05, 0.03]", "KidWThreeCI": "0.4011 [0.3550, 0.4470]"}
    lines = build_thesis.finding_macros(main, {1: other})
    assert "\\newcommand{\\SeedDiffCount}{3}" in lines and "\\newcommand{\\SeedHeldCount}{2}" in lines
    assert any("seedheld@StepsDpmVsFullKidDiff\\endcsname{否}" in line for line in lines)
    assert any("seedheld@WidthNarrowKidDiff\\endcsname{是}" in line for line in lines)
    assert not any("seedheld@KidWThreeCI" in line for line in lines)
    assert any("seedshift@KidWThreeCI\\endcsname{+0.0291}" in line for line in lines)


def test_seed_findings_lists_read_which_findings_held():
    """The plain reading of the seed runs: a finding kept (excludes 0 on the same side in both), lost (excludes 0
    in the main run only, or flips), gained (contains 0 in the main run only); both containing 0 is in no list."""
    main = {"AccDiffThreeOne": "28.0 [23.8, 32.2]", "StepsDpmVsFullKidDiff": "0.0467 [0.0002, 0.0932]",
            "DivDiffThreeOne": "−0.289 [−0.457, −0.121]", "WidthNarrowKidDiff": "0.02 [-0.02, 0.06]",
            "DepthShallowKidDiff": "0.02 [-0.02, 0.06]", "StageKidLastDiff": "n/a（只有一个训练阶段）"}
    other = {"AccDiffThreeOne": "25.0 [21.0, 29.0]", "StepsDpmVsFullKidDiff": "0.0310 [-0.0150, 0.0770]",
             "DivDiffThreeOne": "0.1 [0.02, 0.2]", "WidthNarrowKidDiff": "0.05 [0.01, 0.09]",
             "DepthShallowKidDiff": "0.01 [-0.03, 0.05]"}
    lines = build_thesis.finding_macros(main, {1: other})
    assert "\\newcommand{\\SeedFindingsKept}{\\FindingName{AccDiffThreeOne}}" in lines
    assert ("\\newcommand{\\SeedFindingsLost}{\\FindingName{StepsDpmVsFullKidDiff}、"
            "\\FindingName{DivDiffThreeOne}}") in lines
    assert "\\newcommand{\\SeedFindingsGained}{\\FindingName{WidthNarrowKidDiff}}" in lines
    assert ["\\newcommand{\\SeedFindingsKeptCount}{1}", "\\newcommand{\\SeedFindingsLostCount}{2}",
            "\\newcommand{\\SeedFindingsGainedCount}{1}", "\\newcommand{\\SeedFindingsUncheckedCount}{0}"] == [
        line for line in lines if "Count}{" in line
                                                               and "SeedFindings" in line]
    # a lost finding reads as "neither", with the note saying why the main run's interval is not a finding
    assert "\\newcommand{\\FindingStepsDpmVsFullKid}[3]{\\FindingNoted{#3}{\\SeedLostNote}}" in lines
    assert "\\newcommand{\\FindingDivDiffThreeOne}[3]{\\FindingNoted{#3}{\\SeedLostNote}}" in lines
    assert "\\newcommand{\\FindingWidthNarrowKid}[3]{#3}" in lines and "\\newcommand{\\FindingAccDiffThreeOne}[3]{#1}" in lines
    alone = build_thesis.finding_macros(main, {})
    assert "\\newcommand{\\FindingStepsDpmVsFullKid}[3]{#1}" in alone
    assert "\\newcommand{\\SeedFindingsKept}{}" in alone and "\\newcommand{\\SeedFindingsKeptCount}{0}" in alone


def test_withdrawn_numbers_of_a_seed_run_count_as_not_measured(tmp_path):
    """A number withdrawn from a recorded run (measured wrongly, found later) is not that run's value: no
    \\SeedValue, out of \\SeedDiffCount, and a main-run finding it would check reads as unchecked, not lost."""
    seeds = tmp_path / "cpu" / "seeds"
    seeds.mkdir(parents=True)
    (seeds / "train-seed-1.tex").write_text("\\newcommand{\\BpdSmallMinusLargeDiff}{-0.0856 [-0.0951, -0.0766]}\n"
                                             "\\newcommand{\\BpdFixedLarge}{3.60}\n"
                                             "\\newcommand{\\AccDiffThreeOne}{25.0 [21.0, 29.0]}\n")
    main = {"BpdSmallMinusLargeDiff": "-0.1062 [-0.1154, -0.0973]", "BpdFixedLarge": "3.52",
            "AccDiffThreeOne": "28.0 [23.8, 32.2]"}
    assert "BpdFixedLarge" in build_thesis.seed_runs(tmp_path / "cpu")[1]
    withdrawal = {"numbers": ["BpdSmallMinusLargeDiff", "BpdFixedLarge"], "reason": "dropout on", "reason_zh": "误开 dropout_p，10% 的输出"}
    (seeds / "train-seed-1.withdrawn.json").write_text(json.dumps(withdrawal), encoding="utf-8")
    runs = build_thesis.seed_runs(tmp_path / "cpu")
    assert runs == {1: {"AccDiffThreeOne": "25.0 [21.0, 29.0]"}}
    lines = build_thesis.finding_macros(main, runs, build_thesis.withdrawn_numbers(tmp_path / "cpu"))
    assert "\\newcommand{\\FindingBpdSmallMinusLarge}[3]{\\FindingNoted{#3}{\\SeedUncheckedNote}}" in lines
    assert "\\newcommand{\\SeedFindingsUnchecked}{\\FindingName{BpdSmallMinusLargeDiff}}" in lines
    assert "\\newcommand{\\SeedFindingsLostCount}{0}" in lines and "\\newcommand{\\SeedDiffCount}{1}" in lines
    assert not any("seedvalue@BpdFixedLarge" in line for line in lines)
    assert "\\newcommand{\\SeedWithdrawnCount}{2}" in lines and "\\newcommand{\\SeedWithdrawnReason}{误开 dropout\\_p，10\\% 的输出}" in lines  # as TeX text
    (seeds / "train-seed-1.withdrawn.json").write_text(json.dumps(withdrawal | {"numbers": ["BpdFixedLarg"]}))
    with pytest.raises(build_thesis.BuildError, match="does not define: BpdFixedLarg"):  # a typo withdraws nothing
        build_thesis.seed_runs(tmp_path / "cpu")
    (seeds / "train-seed-1.withdrawn.json").write_text(json.dumps({"numbers": []}), encoding="utf-8")
    with pytest.raises(build_thesis.BuildError, match="withdrawn.json: expected"):
        build_thesis.seed_runs(tmp_path / "cpu")


def test_every_difference_has_a_name_in_the_thesis():
    """\\FindingName{X} of thesis/findings.tex names every difference (a macro with Diff in its name) that a
    committed profile's numbers.tex defines, so the seed section never prints a bare macro name."""
    named = set(re.findall(r"\\DefineFindingName\{(\w+)\}", (REPO / "thesis" / "findings.tex").read_text(encoding="utf-8")))
    defined = set()
    for numbers in (REPO / "figures").glob("*/numbers.tex"):
        defined |= {name for name in build_thesis.defined_numbers(numbers) if "Diff" in name}
    assert defined, "no committed numbers.tex defines a difference"
    assert defined <= named, f"differences without a name in thesis/findings.tex: {sorted(defined - named)}"


@pytest.mark.parametrize("text, typeset", [
    ("{-0.2724 [-0.3112, -0.2335]}", "{−0.2724 [−0.3112, −0.2335]}"),   # minus signs
    ("$1.3\\times10^{-2}$ (x=-1)", "$1.3\\times10^{−2}$ (x=−1)"),
    ("CIFAR-10, DDIM-50, 2026-12-06 11:25, 01-02, a--1", "CIFAR-10, DDIM-50, 2026-12-06 11:25, 01-02, a--1"),  # hyphens
    ("\\hspace{-2pt}\\vspace{-1.5em}", "\\hspace{-2pt}\\vspace{-1.5em}"),  # dimensions stay valid TeX
    ("% -1 in a comment\n-1\n", "% -1 in a comment\n−1\n"),
])
def test_minus_signs_are_typeset_as_minus_signs(text, typeset):
    assert build_thesis.typeset_minus(text) == typeset


def test_the_thesis_inputs_typeset_copies_of_numbers_and_tables(tmp_path):
    fig, build = tmp_path / "cpu", tmp_path / "build"
    (fig / "tables").mkdir(parents=True)
    (fig / "numbers.tex").write_text("\\newcommand{\\KidDiff}{-0.27 [-0.31, -0.23]}\n")
    (fig / "tables" / "steps.tex").write_text("DDIM-50 & -0.5 \\\\\n")
    (build / "tables").mkdir(parents=True)
    (build / "tables" / "stale.tex").write_text("a table no longer made\n")
    build_thesis.typeset_inputs(fig, build)
    assert (build / "numbers.tex").read_text() == "\\newcommand{\\KidDiff}{−0.27 [−0.31, −0.23]}\n"
    assert (build / "tables" / "steps.tex").read_text() == "DDIM-50 & −0.5 \\\\\n"
    assert not (build / "tables" / "stale.tex").exists()
    assert "-0.27" in (fig / "numbers.tex").read_text()  # the figures stay as the notebooks wrote them


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


def test_log_check_catches_a_page_whose_body_runs_off_it(tmp_path):
    """A tabular longer than the page leaves "Overfull \\vbox (...pt too high) has occurred while \\output is
    active": its last rows are cut off, so the build fails; a fraction of a point of glue does not."""
    log = tmp_path / "thesis.log"
    log.write_text("[43\n\n]\nOverfull \\vbox (285.24908pt too high) has occurred while \\output is active []\n")
    assert any("285.24908pt taller" in p for p in build_thesis.check_log(log, tmp_path / "none.blg"))
    log.write_text("Overfull \\vbox (0.8pt too high) has occurred while \\output is active []\n")
    assert build_thesis.check_log(log, tmp_path / "none.blg") == []


def test_provenance_appendix_says_when_artefacts_come_from_a_dirty_tree():
    clean = {"loss_curve": {"notebook": "04_training", "commit": "abcdef0123456789", "dirty": False},
             "hparams": {"notebook": "03_unet", "commit": "abcdef0123456789", "dirty": False}}
    tex = build_thesis.provenance_tex(clean, ["loss_curve"], ["hparams"])
    assert "全部图表都是在工作区没有未提交修改时生成的" in tex and "*" not in tex
    dirty = dict(clean, hparams={"notebook": "03_unet", "commit": "abcdef0123456789", "dirty": True})
    tex = build_thesis.provenance_tex(dirty, ["loss_curve"], ["hparams"])
    assert "2 项图表中有 1 项" in tex and "表~\\ref{prof:tab:hparams}* &" in tex and "图~\\ref{prof:fig:loss_curve} &" in tex
    legacy = dict(clean, loss_curve={"notebook": "04_training", "commit": "abcdef0123456789-dirty"})
    assert "2 项图表中有 1 项" in build_thesis.provenance_tex(legacy, ["loss_curve"], ["hparams"])


def test_config_and_code_values_are_read_from_their_sources(tmp_path):
    lines = "\n".join(build_thesis.config_macros(REPO / "configs"))
    assert "\\newcommand{\\CfgT}{1000}" in lines and "\\newcommand{\\CfgLr}{\\ensuremath{2\\times10^{-4}}}" in lines
    assert "\\newcommand{\\CfgTotalSteps}{800\\,000}" in lines and "\\newcommand{\\CfgEmaDecay}{0.9999}" in lines
    assert build_thesis.tex_config_number(1e-4) == "\\ensuremath{10^{-4}}"
    assert build_thesis.tex_config_number([16]) == "16" and build_thesis.tex_config_number(0.02) == "0.02"
    (tmp_path / "cifar10.yaml").write_text("train: {lr: 0.5}\n")
    with pytest.raises(build_thesis.BuildError, match="CfgT"):
        build_thesis.config_macros(tmp_path)
    code = "\n".join(build_thesis.code_macros(REPO))
    assert "\\newcommand{\\CodeGroupNormGroups}{32}" in code


def test_guidance_wording_follows_best_and_default_scale():
    assert build_thesis.guidance_macros({"BestGuidanceScale": "3", "DefaultGuidanceScale": "3"}) == \
        ["\\newcommand{\\IfBestGuidanceIsDefault}[2]{#1}"]
    assert build_thesis.guidance_macros({"BestGuidanceScale": "5", "DefaultGuidanceScale": "3"}) == \
        ["\\newcommand{\\IfBestGuidanceIsDefault}[2]{#2}"]


# --------------------------------------------------------------- every number has a source (no TeX needed)
# A number in the thesis text must come from numbers.tex (a macro), a configuration or code constant
# (\Cfg..., \Code... macros of build_thesis), a generated table, or thesis/literature.tex. Single digits
# (indices, small counts, "表 2") and the displayed equations are exempt; the few definitional constants
# below are listed with the reason they are not results.
DEFINITIONAL = [
    (r"\\\{0,(?:1,)?\\dots,255\\\}", "8-bit pixel values"),
    (r"[12]/255", "width of a pixel bin after scaling to [-1, 1] (section 2.4.2)"),
    (r"\b256 个取值", "number of 8-bit pixel values"),
    (r"\(0,1\)", "the open unit interval"),
    (r"\[\d(?:,\d)+\]|\d(?:\{:\}\d)+", "a list of single-digit channel multipliers"),
    (r"(\d\d)\\times\1\b", "image side lengths of a dataset (32×32 CIFAR-10, 64×64 CelebA, 28×28 MNIST)"),
    (r"(?:19|20)\d\d\s*年", "a publication year"),
    (r"\(10\+n\)", "the EMA decay warm-up formula of diffusion/ema.py"),
]
_DISPLAY = re.compile(r"\\begin\{(equation\*?|align\*?|gather\*?)\}.*?\\end\{\1\}|\\\[.*?\\\]", re.S)
_STRIP = [
    r"(?<!\\)%.*",
    r"\\(?:label|ref|eqref|cite|input|ProfFig|ProfTable|NbLink|pdfbookmark|begin|end|SourceNote|"
    r"SourceNoteNoData|setcounter|addcontentsline|renewcommand)\*?(?:\[[^\]]*\])*(?:\{[^{}]*\})+",
    r"\[[^\[\]]*(?:cm|pt|em|ex|mm|linewidth|textwidth|baselineskip)[^\[\]]*\]",
    r"\\(?:vspace|hspace|zihao|makebox|ThesisBlank|linespread|setlength)\*?\{[^{}]*\}",
    r"-?\d*\.?\d+\s*(?:cm|pt|em|ex|mm|bp)\b",
]
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.\-+])\d+(?:[.,]\d+)*(?![A-Za-z0-9])")


def unsourced_numbers(text: str, table_numbers: set[str]) -> list[str]:
    """Numbers of ``text`` (a chapter's TeX) that no allowed source covers, with some context each."""
    text = _DISPLAY.sub(" ", text)
    for pattern in _STRIP:
        text = re.sub(pattern, " ", text)
    for pattern, _reason in DEFINITIONAL:
        text = re.sub(pattern, " ", text)
    out = []
    for m in _NUMBER.finditer(text):
        num = m.group(0)
        if len(num) == 1 or num in table_numbers:
            continue
        out.append(f"{num!r} in “…{text[max(0, m.start() - 25):m.end() + 25]}…”")
    return out


def _table_numbers(fig_dir: Path) -> set[str]:
    found = set()
    for table in (fig_dir / "tables").glob("*.tex"):
        found.update(_NUMBER.findall(table.read_text(encoding="utf-8")))
    return found


def test_number_check_catches_typed_numbers():
    assert unsourced_numbers("EMA 例子：$d=0.995$、共 700 步，权重约 0.13。", set())
    assert unsourced_numbers("误差约 $4/255\\sim5/255$。", set())  # a measured error typed in
    assert unsourced_numbers("宽度为 $2/255$ 的区间", set()) == []  # a pixel bin, definitional
    assert unsourced_numbers("为 \\StepsTimeFull{} 秒，$w=3$，表 2，CIFAR-10 与 MNIST-5k。", set()) == []
    assert unsourced_numbers("1000 步祖先采样", {"1000"}) == []
    assert unsourced_numbers("\\begin{equation}x=10000\\end{equation} 于 2020 年", set()) == []


def test_every_number_in_the_text_has_a_source():
    tables = set()
    for fig_dir in [FIGURES / p for p in ("quick", "long", "cpu") if (FIGURES / p / "tables").is_dir()] or [SMOKE]:
        tables |= _table_numbers(fig_dir)
    problems = []
    for src in sorted((THESIS / "chapters").glob("*.tex")):
        problems += [f"{src.name}: {p}" for p in unsourced_numbers(src.read_text(encoding="utf-8"), tables)]
    assert not problems, ("numbers typed into the thesis (use a numbers.tex/\\Cfg macro, a generated table "
                          "or thesis/literature.tex):\n  " + "\n  ".join(problems))


def test_literature_values_are_listed_once_with_their_source():
    bib = (THESIS / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    lines = [ln for ln in (THESIS / "literature.tex").read_text(encoding="utf-8").splitlines()
             if ln.startswith("\\newcommand")]
    assert lines
    body = "\n".join(src.read_text(encoding="utf-8") for src in sorted((THESIS / "chapters").glob("*.tex")))
    values = []
    for line in lines:
        m = re.fullmatch(r"\\newcommand\{\\(Lit[A-Za-z]+)\}\{([^{}]+)\}\s*%\s*(\w+),\s*(Table|Section|Figure) (\d+).*", line)
        assert m, f"literature.tex: expected '\\newcommand{{\\Lit...}}{{value}} % key, Table N (...)', got {line!r}"
        macro, value, key = m.group(1), m.group(2), m.group(3)
        assert key in keys, f"{macro}: citation key {key} is not in references.bib"
        assert re.search(rf"\\{macro}(?![A-Za-z])", body), f"{macro} is listed but never used"
        values.append((key, value))
    assert len(values) == len(set(values)), "a literature value is listed twice"


def test_report_text_sizes_read_from_a_figure_pdf(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.set_xlabel("label", fontsize=9)
    ax.set_title("title", fontsize=12)
    ax.tick_params(labelsize=6)
    fig.savefig(tmp_path / "f.pdf")
    plt.close(fig)
    sizes = thesis_check.text_sizes(tmp_path / "f.pdf")
    assert min(sizes) == pytest.approx(6) and max(sizes) == pytest.approx(12) and 9 in sizes
    assert thesis_check.included_figures("ProfFig: a scale=1\nProfFig: b scale=0.5\nProfFig: a scale=0.8\n") == \
        {"a": 0.8, "b": 0.5}


def test_provenance_appendix_lists_each_artefact(tmp_path):
    records = {"loss_curve": {"notebook": "04_training", "commit": "abcdef0123456789", "seed": 3,
                              "dataset_label": "MNIST-5k", "device": "cpu", "wall_time": 12.25,
                              "config": {"train": {"batch_size": 64}}, "created": "2025-01-01T00:00:00Z"},
               "tables/hparams.tex": {"notebook": "03_unet"}}
    tex = build_thesis.provenance_tex(records, ["loss_curve"], ["hparams", "bpd"])
    row = next(line for line in tex.splitlines() if line.startswith("图~\\ref{prof:fig:loss_curve}"))
    # commit, seed and device differ between the two records: columns, not the shared sentence
    assert row.split(" & ") == ["图~\\ref{prof:fig:loss_curve}", "04\\_training", "MNIST-5k", "abcdef0123", "3", "cpu",
                                "2025-01-01 00:00 \\\\"]
    assert "03\\_unet" in tex and "共同的来源" not in tex
    assert "表~\\ref{prof:tab:bpd} & \\multicolumn{6}{l}{provenance.json 中没有该产物的记录}" in tex
    assert "PyTorch" not in tex  # recorded by neither
    same = {"a": {"notebook": "04_training", "git_commit": "abcdef0123456789", "seed": 0, "device": "AMD EPYC",
                  "torch_version": "2.14.1", "dataset": "MNIST-5k at 16×16", "created_utc": "2026-11-30T10:51:08Z"}}
    tex = build_thesis.provenance_tex(same, ["a"], [])
    assert "全部图表共同的来源：commit abcdef0123；随机种子 0；设备 AMD EPYC；PyTorch 2.14.1。" in tex
    assert "图~\\ref{prof:fig:a} & 04\\_training & MNIST-5k（16×16） & 2026-11-30 10:51 \\\\" in tex


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


# ------------------------------------------------------------------ the committed profiles, as printed
COMMITTED = [p for p in ("quick", "long", "cpu") if (FIGURES / p / "numbers.tex").is_file()]


@pytest.fixture(scope="module", params=COMMITTED or ["quick"])
def committed_pdf(request, tmp_path_factory):
    if _missing or not COMMITTED:
        pytest.skip("no committed figures profile, or the TeX/poppler tools are missing")
    build_dir = tmp_path_factory.mktemp(f"thesis-{request.param}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--profile", request.param, "--build-dir", str(build_dir),
                           "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return build_dir / "thesis.pdf"


@pytest.mark.timeout(600)
def test_committed_thesis_passes_the_examiner_check(committed_pdf):
    """Every committed profile (quick, which `make all` regenerates; cpu, which `make thesis` prefers)."""
    problems = thesis_check.check(committed_pdf)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(shutil.which("xelatex") is None or shutil.which("pdftotext") is None,
                    reason="xelatex/pdftotext missing (make setup installs them)")
@pytest.mark.timeout(300)
def test_seed_note_goes_before_the_closing_punctuation(tmp_path):
    r"""``\FindingNoted`` (thesis/findings.tex) as xelatex typesets it: the note before a closing 。；.;, after
    a reading without one, nothing for an empty reading, and a nested note that does not move the outer one."""
    cases = [r"\FindingNoted{甲。}{（注）}", r"\FindingNoted{乙}{（注）}", r"\FindingNoted{}{（注）}",
             r"\FindingNoted{丙\FindingNoted{丁。}{（内）}；}{（外）}", r"\FindingNoted{told apart.}{ (n)}"]
    body = "\n".join(f"[{case}]\\par" for case in cases)
    (tmp_path / "t.tex").write_text(
        "\\documentclass{ctexart}\n\\pagestyle{empty}\n\\newcommand{\\SeedRunList}{1}\n"
        f"\\input{{{(REPO / 'thesis' / 'findings.tex').as_posix()}}}\n"
        f"\\begin{{document}}\n{body}\n\\end{{document}}\n", encoding="utf-8")
    proc = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(tmp_path / "t.pdf"), "-"], stdout=subprocess.PIPE,
                          text=True).stdout
    lines = [re.sub(r"\s+", "", line) for line in text.splitlines() if line.strip()]
    assert lines[:5] == ["[甲（注）。]", "[乙（注）]", "[]", "[丙丁（内）。（外）；]", "[toldapart(n).]"], lines
