"""Issue 17: stray lines silenced locally, never by changing process-wide state behind the caller's back."""

from __future__ import annotations

import io
import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from clothprobe.classifiers.metrics import classification_metrics


def test_metrics_on_a_split_missing_a_predicted_class_warn_nothing() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])  # class 2 predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(y, proba, ["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert metrics.balanced_accuracy == balanced_accuracy_score(y, proba.argmax(1)) == 0.5


def test_a_report_figure_with_glyphs_the_font_lacks_warns_nothing_and_leaves_filters_alone() -> None:
    from matplotlib.figure import Figure

    from clothprobe.report.plots import _png

    fig = Figure()
    fig.subplots().set_title("👕 围巾")
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _png(fig).startswith(b"\x89PNG")
    assert [str(w.message) for w in caught] == []
    assert warnings.filters == before


def test_nncf_progress_goes_nowhere_off_a_terminal_and_state_is_restored(monkeypatch) -> None:  # noqa: ANN001
    import logging
    import sys

    from clothprobe.featurize.model.runtimes import _nncf_progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    stdout, level = sys.stdout, logging.getLogger("nncf").level
    with _nncf_progress():
        print("Statistics collection ━━━━━━━━ 100%")
        logging.getLogger("nncf").info("INFO:nncf:compressing")
        assert logging.getLogger("nncf").level == logging.WARNING
    assert sys.stdout is stdout and logging.getLogger("nncf").level == level
    assert sys.stderr.getvalue() == ""
