"""Display helpers of diffusion.report used by the thesis figures and tables: the centred smoother, grid
shapes, log tick labels, Chinese display names, and LaTeX escaping of combining tildes."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion import report
from diffusion.report.style import _log_tick_label


def test_centred_moving_average_has_no_lag():
    steps = np.arange(200, dtype=float)
    loss = np.where(steps < 100, 1.0, 0.5)  # a step change at 100
    smooth = report.centred_moving_average(loss, 21)
    # centred: the midpoint of the transition stays at the step; a one-sided average would lag by ~10
    assert smooth[99] > 0.5 and smooth[100] < 1.0
    assert abs(smooth[99] + smooth[100] - 1.5) < 1e-12
    assert np.all(smooth[:89] == 1.0) and np.all(smooth[111:] == 0.5)
    line = 3.0 * steps - 7.0
    np.testing.assert_allclose(report.centred_moving_average(line, 9), line)  # linear trends pass unchanged
    np.testing.assert_allclose(report.centred_moving_average([1, 5, 1, 5, 1], 3), [1, 7 / 3, 11 / 3, 7 / 3, 1])


def test_relative_windows_follow_a_steep_early_fall():
    # a training loss on a log axis: exp(-i/3) falls by e per point, then flat with noise
    i = np.arange(120)
    log_loss = np.maximum(-i / 3.0, -3.0) + 0.05 * np.random.default_rng(0).standard_normal(120) * (i > 12)
    full = report.centred_moving_average(log_loss, 13)
    capped = report.centred_moving_average(log_loss, 13, relative=0.25)
    # at point 6 the full window (points 0..12) averages the fall into it; the capped one (5..7) does not
    assert abs(full[6] - log_loss[6]) > 0.1 and abs(capped[6] - log_loss[6]) < 1e-9
    h = np.minimum(6, np.minimum(np.floor(0.25 * i), 119 - i)).astype(int)
    np.testing.assert_allclose(capped, [log_loss[k - w:k + w + 1].mean() for k, w in zip(i, h)])
    np.testing.assert_allclose(capped[24:-6], full[24:-6])  # the tail gets the full window
    line = 3.0 * i - 7.0
    np.testing.assert_allclose(report.centred_moving_average(line, 9, relative=0.1), line)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="relative"):
            report.centred_moving_average(line, 9, relative=bad)


@pytest.mark.parametrize("window", [0, 2, -3, 2.0])
def test_centred_moving_average_rejects_bad_windows(window):
    with pytest.raises(ValueError, match="window"):
        report.centred_moving_average([1.0, 2.0, 3.0], window)


def test_grid_columns_leave_no_ragged_row():
    for n in (1, 2, 4, 8, 12, 16, 32, 36, 64, 100):
        cols = report.grid_columns(n)
        assert n % cols == 0 and cols * cols >= n
    assert report.grid_columns(32) == 8 and report.grid_columns(64) == 8 and report.grid_columns(7) == 7
    with pytest.raises(ValueError, match="n must"):
        report.grid_columns(0)


def test_log_tick_labels_are_maths_with_a_true_minus():
    assert _log_tick_label(1e-3) == "$10^{-3}$" and _log_tick_label(100.0) == "$10^{2}$"
    assert _log_tick_label(0.5) == "$0.5$" and _log_tick_label(0.0) == ""


@pytest.mark.parametrize("limits, decade, intermediate", [((0.015, 1.2), "$0.1$", "$0.05$"),
                                                          ((1e-4, 10.0), "$10^{-1}$", "")])
def test_log_axes_write_their_labels_one_way(limits, decade, intermediate):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], list(limits))
    report.log_axis(ax, "y")
    ax.set_ylim(*limits)
    axis = ax.yaxis
    # under two decades: plain numbers at the decades too; wider: 10^k at the decades, no intermediate labels
    assert axis.get_major_formatter()(0.1) == decade
    assert axis.get_minor_formatter()(0.05) == intermediate
    plt.close(fig)


def test_chinese_display_names():
    assert report.dataset_label_zh("MNIST-5k at 16×16") == "MNIST-5k（16×16）"
    assert report.dataset_label_zh("CIFAR-10 (JPEG q75 copy)") == "CIFAR-10（JPEG q75 有损副本）"
    assert report.dataset_label_zh("CelebA 6k subset") == "CelebA（6k 子集）"
    assert report.dataset_label_zh("CIFAR-10") == "CIFAR-10"
    from diffusion.report.labels import dataset_label_en

    for label in ("MNIST-5k at 16×16", "CIFAR-10 (JPEG q75 copy)", "CelebA 6k subset", "CelebA 64×64", "CIFAR-10"):
        assert dataset_label_en(report.dataset_label_zh(label)) == label == dataset_label_en(label)
    assert report.toy_label_zh("toy:swiss_roll") == "二维玩具数据（瑞士卷）"
    with pytest.raises(ValueError, match="name must be one of"):
        report.toy_label_zh("moons")
    assert report.sampler_name_zh("dpmpp2m") == "DPM-Solver++(2M)"
    assert report.class_name_zh("airplane") == "飞机" and report.class_name_zh("7") == "7"
    with pytest.raises(ValueError, match="sampler"):
        report.sampler_name_zh("euler")


def test_escape_latex_keeps_the_tilde_of_beta_tilde():
    assert report.escape_latex("σ² = β̃_t") == "σ² = $\\tilde{\\beta}$\\_t"
    assert report.escape_latex("x̃ & 50%") == "$\\tilde{x}$ \\& 50\\%"


def test_figure_style_uses_the_cjk_face_first_when_present():
    import matplotlib

    cjk = report.set_style()
    families = matplotlib.rcParams["font.family"]
    assert families[-1] == "DejaVu Sans"
    assert (families[0] == cjk) if cjk else families == ["DejaVu Sans"]
    assert min(matplotlib.rcParams[k] for k in ("font.size", "xtick.labelsize", "ytick.labelsize",
                                                  "legend.fontsize")) >= 7.0


def test_cjk_face_is_embedded_as_true_truetype(tmp_path):
    from diffusion.report import fonts

    otf = fonts.find_fandol_song()
    if otf is None:
        pytest.skip("FandolSong (Debian TeX fonts) not installed")
    from fontTools.ttLib import TTFont

    ttf = TTFont(str(fonts.truetype_copy(otf)))  # cached after the first call
    src = TTFont(str(otf))
    assert "glyf" in ttf and "CFF " not in ttf and ttf.sfntVersion == "\x00\x01\x00\x00"
    for ch in "时间步扩散αβ0aZ":  # same glyph (by id; glyph names are dropped) and same advance width
        g_ttf, g_src = ttf.getBestCmap()[ord(ch)], src.getBestCmap()[ord(ch)]
        assert ttf.getGlyphID(g_ttf) == src.getGlyphID(g_src)
        assert ttf["hmtx"][g_ttf] == src["hmtx"][g_src]
