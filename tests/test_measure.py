"""The claims of book/measure.md ("How we measure"). The appendix is a plain page without
a kernel, so its checkable numbers are tested here: each is what the companion computes,
or the figure its docstring and tests/test_metrics.py measure."""

from __future__ import annotations

import math
import re

from book_tools import ROOT

from companion import metrics

PAGE = (ROOT / "book" / "measure.md").read_text(encoding="utf-8")


def test_the_band_table_is_what_the_metric_computes():
    section = PAGE[PAGE.index("## Many ζ-scores at once"):PAGE.index("## Samples of a known")]
    rows = re.findall(r"^\| (\d+) \|[^|]*\| (\d\.\d\d) \|$", section, flags=re.MULTILINE)
    assert [int(m) for m, _ in rows] == [1, 6, 24]
    for m, band in rows:
        assert f"{metrics.bonferroni_band(int(m), 1e-3):.2f}" == band


def test_the_floor_table_is_the_documented_one():
    for n, floor in (("1 000", "0.098 ± 0.031"), ("4 000", "0.048 ± 0.014"), ("10 000", "0.030 ± 0.010")):
        assert f"| {n} | {floor} |" in PAGE
        assert floor.replace("±", "+-") in metrics.__doc__


def test_the_level_table_is_the_documented_one():
    doc = metrics.mixture_report.__doc__
    for row, figures in (("| 1-D, two modes | 6 | 40 000 |", ("0.80 +- 0.01", "0.83 +- 0.05", "0.98 +- 0.16")),
                         ("| 2-D, four modes | 24 | 80 000 |", ("0.99 +- 0.01", "1.16 +- 0.04", "1.45 +- 0.13"))):
        line = next(line for line in PAGE.splitlines() if line.startswith(row))
        assert line == row + "".join(f" {f.replace('+-', '±')} |" for f in figures)
        assert all(f in " ".join(doc.split()) for f in figures)
    # "about 1.5 times as often ... once in 700 runs"
    assert "about 1.5 times" in PAGE and round(1 / (1.45e-3), -2) == 700


def test_the_ks_critical_value():
    # "0.036 at n = 2000" (Stephens' form, as chapter 5 computes it)
    n = 2000
    assert f"{1.628 / (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)):.3f}" == "0.036"
    assert "0.036 at $n = 2000$" in PAGE


def test_the_kid_calibration_figures_are_the_docstrings():
    for figure in ("0.0376 and 0.0388", "0.132 and 0.133", "within 4 %"):
        assert figure in " ".join(PAGE.split())
    assert "agree within 4 %" in " ".join(metrics.kid.__doc__.split())
