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
    for row, figures in (("| 1-D, two modes | 6 | 60 000 |", ("0.79 +- 0.01", "0.81 +- 0.04", "0.72 +- 0.13")),
                         ("| 2-D, four modes | 24 | 120 000 |", ("0.95 +- 0.01", "0.99 +- 0.03", "1.02 +- 0.09"))):
        line = next(line for line in PAGE.splitlines() if line.startswith(row))
        assert line == row + "".join(f" {f.replace('+-', '±')} |" for f in figures)
        assert all(f in " ".join(doc.split()) for f in figures)
    # the documented level is the one the calibration test re-measures
    from test_metrics import DOCUMENTED_LEVEL
    assert [float(f.split()[0]) for f in figures] == list(DOCUMENTED_LEVEL["2d"].values())
    # "about once in 1000 runs": 1.02 +- 0.09 times the level 1e-3
    assert "about once in 1000 runs" in PAGE and abs(1.02 - 1) < 0.09
    page, doc = " ".join(PAGE.split()), " ".join(doc.split())
    # the same measurements on the page and in the docstring
    for on_page, in_doc in (("skewness $-0.11$", "skewness -0.11"), ("skewness is $+0.014$", "skewness +0.014"),
                            ("1.10 ± 0.03", "1.10 +- 0.03"), ("1.23 ± 0.10", "1.23 +- 0.10"),
                            ("60 were below and 7 above; now 17 and 23", "60 below and 7 above, now 17 and 23"),
                            ("0.90 ± 0.22", "0.90 +- 0.22"), ("1.45 ± 0.27", "1.45 +- 0.27"),
                            ("1.65 ± 0.29", "1.65 +- 0.29"), ("1.95, 3.85 and 7.05", "1.95), at n = 2000")):
        assert on_page in page and in_doc in doc, (on_page, in_doc)
    assert "250 samples in the lightest" in page and "250 / min_k pi_k" in doc


def test_the_ks_critical_value():
    # "0.036 at n = 2000" (Stephens' form, as chapter 5 computes it)
    n = 2000
    assert f"{1.628 / (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)):.3f}" == "0.036"
    assert "0.036 at $n = 2000$" in PAGE


def test_the_kid_calibration_figures_are_the_docstrings():
    for figure in ("0.0376 and 0.0388", "0.132 and 0.133", "within 4 %"):
        assert figure in " ".join(PAGE.split())
    assert "agree within 4 %" in " ".join(metrics.kid.__doc__.split())
