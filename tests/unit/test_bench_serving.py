"""bench.serving's steady-window rate: only the tokens that arrived inside the window count,
whenever their request started (a request straddling either edge counts in part)."""
import pytest

from bench.serving import steady_rate


def test_the_steady_window_counts_tokens_by_their_arrival():
    runs = [
        {"started": 0.0, "stamps": [0.5, 1.0, 2.9, 3.0]},      # warm-up: only 3.0 is inside [3, 10)
        {"started": 3.0, "stamps": [0.1, 2.0, 6.9, 7.0]},      # 3.1, 5.0, 9.9 inside; 10.0 is not
        {"started": 9.5, "stamps": [0.2, 0.6, 1.0]},           # the drain: 9.7 inside, 10.1 and 10.5 not
    ]
    assert steady_rate(runs, 3.0, 10.0) == pytest.approx(5 / 7.0)
    assert steady_rate(runs, 0.0, 20.0) == pytest.approx(11 / 20.0)
    assert steady_rate([], 3.0, 10.0) == 0
