"""Rows per inference request, chosen by measurement: the first time a stored model runs on a machine, it
is compiled for each candidate row count and timed on a fixed batch, and the fastest is recorded in the
store entry (``rows``), keyed by precision and machine, so later runs compile once and time nothing.

A job too small to repay the timing is not timed: it runs at ``UNTIMED_ROWS`` and records nothing, so
the first job of ``WORTH_TIMING`` images or more measures (the timing embeds 152 images to gain at most
about a fifth on the rest).

Why measure rather than fix: on 2 Zen 5 cores (AVX-512 VNNI/BF16, OpenVINO 2026.4) int8 Xception ran 19%
faster at 8 rows than at 32, while bfloat16 hardly changed; the best count depends on the network, the
precision and the CPU's caches, and a few seconds of timing once per machine finds it wherever it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from clothprobe.featurize.model.recipe import Recipe
from clothprobe.featurize.model.runtimes import Runner
from clothprobe.featurize.model.store import ModelStore, RowsChoice, StoreEntry

CANDIDATES = (8, 16, 32)  # even: a request holds both views of each image when the flipped view is made
TIMED_IMAGES = 32  # per candidate, after one warm-up request: the same work for every row count; 152
# images in all where three requests of each took 224 (int8 Xception runs about 11 img/s on a 2-core
# AVX2-only Zen 3: about 14 s instead of 20)
WORTH_TIMING = 800  # images a job computes before the timing can pay for itself: 152 images timed for a
# gain of at most 19% (int8 Xception, 8 vs 32 rows on Zen 5) on the rest
UNTIMED_ROWS = 16  # the middle candidate, for jobs not worth timing


def worth_timing(images: int) -> bool:
    """Whether a job that computes ``images`` images should measure rows per request when none are recorded."""
    return images >= WORTH_TIMING


def request_rate(recipe: Recipe, runner: Runner, rows: int, images: int = TIMED_IMAGES) -> float:
    """Images per second of ``runner`` (compiled for ``rows``) on a fixed batch: preprocessing + network,
    over ``images`` images (at least one request)."""
    from clothprobe.featurize.embed import model_input

    size = recipe.input_size
    pixels = np.random.default_rng(rows).integers(0, 256, (rows, size, size, 3), dtype=np.uint8)
    x = model_input(recipe, pixels)
    runner(x)
    requests = max(1, images // rows)
    started = time.perf_counter()
    for _ in range(requests):
        runner(x)
    return rows * requests / (time.perf_counter() - started)


def chosen_rows(recipe: Recipe, entry: StoreEntry, store: ModelStore, machine: str,
                compile_for: Callable[[int], Runner], measure: bool = True) -> tuple[int, Runner]:
    """The rows per request recorded for ``recipe``'s precision on ``machine``, else measured now and
    recorded (``measure``) or ``UNTIMED_ROWS``; with the model compiled for it."""
    key = f"{recipe.precision} on {machine}"
    if key in entry.rows:
        rows = entry.rows[key].rows
        return rows, compile_for(rows)
    if not measure:
        return UNTIMED_ROWS, compile_for(UNTIMED_ROWS)
    best: tuple[float, int, Runner] | None = None
    rates = {}
    for rows in CANDIDATES:
        runner = compile_for(rows)
        rates[str(rows)] = round(request_rate(recipe, runner, rows), 2)
        if best is None or rates[str(rows)] > best[0]:
            best = (rates[str(rows)], rows, runner)
        del runner  # one compiled model at a time beyond the best
    assert best is not None
    store.record_rows(entry, key, RowsChoice(best[1], rates, time.time()))
    return best[1], best[2]
