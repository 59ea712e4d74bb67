"""Each teacher of a figure gets its own colour and marker, and the fidelity legend shows the markers drawn."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from kdcore.analysis import figures as F


def test_every_teacher_of_a_figure_has_its_own_colour_and_marker():
    teachers = ["resnet34-w16", "resnet50-w16", "resnet50", "resnet34", "resnet50.logit.resnet34", "resnet101"]
    styles = F.teacher_styles(teachers)
    assert set(styles) == set(teachers)
    assert len({c for c, _ in styles.values()}) == len(teachers)
    assert len({m for _, m in styles.values()}) == len(teachers)
    assert styles["resnet50"] == F.TEACHER_STYLE["resnet50"]  # a named teacher keeps its style in every figure
    many = F.teacher_styles([f"resnet18-w{w}" for w in range(1, 14)])
    assert len(set(many.values())) == 13


def test_fidelity_legend_shows_the_markers_drawn():
    styles = F.teacher_styles(["resnet34-w16", "resnet50-w16"])
    fig = plt.figure()
    F._fidelity_legend(fig, styles, ["logit", "feature"], ["resnet34-w16", "resnet50-w16"])
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == ["teacher R34-w16", "teacher R50-w16"] and texts[-1] == "baseline vs teacher (control)"
    drawn = {m for _, m in styles.values()}
    markers = {h.get_marker() for h in legend.legend_handles if hasattr(h, "get_marker")}
    assert markers == drawn  # no circle or diamond that the plot does not draw
    plt.close(fig)
