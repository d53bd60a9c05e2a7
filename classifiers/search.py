"""One head's search for every balance mode asked for: each candidate tap set x balance mode is one ``select``
(the grid, chosen on validation or by cv), and each run keeps its best tap set, as ``cli fit --taps`` says
(``classifiers/taps.py``). Never on test.

What makes it fast (each run the one its balance mode gives alone):

- **Shared work.** The searches of one tap set share what does not depend on the balance mode (the scaler
  fitted on the training rows and the rows it scales, the rows held out for early stopping, LightGBM's
  binned rows; ``classifiers/shared.py``): computed once, each a pure function of the rows and the seed.
  A tap set's columns and shared work live while its searches run, and are dropped after the last one.
- **Side by side.** Heads that keep no process-wide state use every core with one thread per fit: a
  warm-started path (logistic regression's C) is one chain, so the (tap set, balance mode) searches run side
  by side, each with one BLAS thread (always: a run is then the same on any number of cores); LightGBM's
  grid entries are independent fits, so they run side by side within each search, and where a search has
  fewer entries than there are cores (the tap sets compared at one entry), the searches run side by side.
  Small fits share out badly over threads, and under a second load on the same cores a 2-thread LightGBM
  fit ran 12x slower than a 1-thread one (docs/guide/speed.md). The Keras head (process-wide seeding) runs
  one fit at a time, as before.
- **Tap sets compared at the first setting** (``tap_search="first-entry"`` in the registry: LightGBM, the
  dense head): each candidate tap set is fitted with the grid's first entry only, each run keeps the best,
  and the rest of the grid is searched on that one (its shared work kept from the first round): 7 fits
  instead of 16 for LightGBM's grid of 4 on 4 tap sets. The run's settings are the best of the whole grid
  on the kept tap set, chosen as ``select`` chooses. A SMOTE run's tap sets are compared by its class-weighted
  twin's fits (both balance the classes; SMOTE's synthetic rows, 2.6x the training rows here, make each fit
  cost 1.5-3x), fitted once when both runs are asked for; the SMOTE run then searches its whole grid on the
  tap set kept. Its record says so (``compared_with``).

A run's ``seconds`` are the wall seconds of its own searches (shared steps counted where they were done; a
stand-in's comparison shared evenly among the runs it chose for; searches side by side overlap).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from clothprobe.classifiers.data import FeatureSet
from clothprobe.classifiers.registry import ClassifierSpec, available_cores
from clothprobe.classifiers.select import Selection, Sharing, best_candidate, select
from clothprobe.classifiers.shared import Cores, SharedWork
from clothprobe.classifiers.taps import TapChoice, compare_on_held, held_score, restrict, tap_candidates


@dataclass(frozen=True)
class Run:
    """One run of a head: its balance mode and loss."""

    balance: str
    loss: str


@dataclass
class TapSearch:
    """A run's search: the tap set kept, the selection on it, the record of every candidate (for the run's
    metrics), and the seconds its searches took (each shared step counted where it was done)."""

    choice: TapChoice
    selection: Selection
    record: dict
    seconds: float


class _TapSets:
    """Each candidate tap set's columns and shared work. The columns are made by the first search that needs them
    and dropped after the last one that was planned (``plan``); the shared work (binned rows, scaled rows)
    lives until ``release`` too, so a second round of searches on a tap set kept finds it."""

    def __init__(self, data: FeatureSet, choices: list[TapChoice]) -> None:
        self.data, self.choices = data, choices
        self._planned = [0] * len(choices)
        self._columns: dict[int, FeatureSet] = {}
        self._shared: dict[int, SharedWork] = {}
        self._lock = threading.Lock()
        self._making = [threading.Lock() for _ in choices]

    def plan(self, units: list[tuple[int, int]]) -> None:
        for c, _ in units:
            self._planned[c] += 1

    def take(self, c: int) -> tuple[FeatureSet, SharedWork]:
        with self._making[c]:
            if c not in self._columns:
                self._columns[c] = restrict(self.data, self.choices[c])
            return self._columns[c], self._shared.setdefault(c, SharedWork())

    def done(self, c: int) -> None:
        with self._lock:
            self._planned[c] -= 1
            if not self._planned[c]:
                self._columns.pop(c, None)

    def release(self, keep: set[int]) -> None:
        """Drop the shared work of every tap set but ``keep``."""
        with self._lock:
            for c in set(self._shared) - keep:
                del self._shared[c]


def _columns(data: FeatureSet, choice: TapChoice) -> int:
    return sum(b.width for b in data.blocks if b.tap in choice.taps[b.backbone])


def search_runs(spec: ClassifierSpec, data: FeatureSet, runs: list[Run], *, tta: bool, seed: int, mode: str,
                taps: str) -> list[TapSearch]:
    """Each run's search over the tap sets ``taps`` stands for (see the module docstring); in ``runs``' order.
    ``spec.tap_search`` ``first-entry``: the tap sets are compared at the grid's first entry (a SMOTE run's by
    its class-weighted stand-in, ``_stand_in``), and the grid is searched on the tap set each run keeps (with the
    work shared there in the first round)."""
    choices = tap_candidates(data, taps)
    coordinate = spec.tap_search == "first-entry" and len(choices) > 1 and len(spec.grid) > 1
    tap_sets = _TapSets(data, choices)
    compare = list(dict.fromkeys(_stand_in(r) for r in runs)) if coordinate else runs
    by = [compare.index(_stand_in(r)) if coordinate else i for i, r in enumerate(runs)]
    grid = spec.grid[:1] if coordinate else spec.grid
    every = [(c, s) for c in range(len(choices)) for s in range(len(compare))]  # tap set by tap set: little held
    done = _searched(spec, tap_sets, compare, every, [grid] * len(compare), tta=tta, seed=seed, mode=mode)
    users = Counter(by)  # a comparison's seconds are shared among the runs it chose for
    own = [compare[by[r]] == run for r, run in enumerate(runs)]  # else a stand-in's fits compared the tap sets
    found = [_kept(taps, data, [(choices[c], done[(c, by[r])][0]) for c in range(len(choices))],
                   sum(done[(c, by[r])][1] for c in range(len(choices))) / users[by[r]], seed,
                   stand_in=None if own[r] else compare[by[r]].balance)
             for r in range(len(runs))]
    kept = [choices.index(f.choice) for f in found]
    tap_sets.release(set(kept) if coordinate else set())
    if not coordinate:
        return found
    grids = [spec.grid[1:] if own[r] else spec.grid for r in range(len(runs))]
    units = sorted(((kept[r], r) for r in range(len(runs))), key=lambda u: (-len(grids[u[1]]), u[0]))  # longest first
    rest = _searched(spec, tap_sets, runs, units, grids, tta=tta, seed=seed, mode=mode)
    return [replace(f, selection=_merged(f.selection, rest[(kept[r], r)][0]) if own[r] else rest[(kept[r], r)][0],
                    seconds=f.seconds + rest[(kept[r], r)][1])
            for r, f in enumerate(found)]


def _stand_in(run: Run) -> Run:
    """The run whose first-entry fits compare the tap sets for ``run``: a SMOTE run's are its class-weighted
    twin's (both balance the classes; SMOTE's synthetic rows make its fits 2-3x the rows, and cost, on these
    data), every other run's are its own."""
    return replace(run, balance="weights") if run.balance == "smote" else run


def _searched(spec: ClassifierSpec, tap_sets: _TapSets, runs: list[Run], units: list[tuple[int, int]],
              grids: list[tuple[dict, ...]], *, tta: bool, seed: int, mode: str) -> dict:
    """``(tap set, run) -> (Selection, seconds)`` for each unit, run ``r`` searching ``grids[r]``; work shared
    and fits side by side as the module docstring says: searches run side by side, and a head whose grid
    entries are independent fits them side by side too, each step holding the cores it runs on (``Cores``)."""
    cores = available_cores() if spec.concurrent else 1
    side_by_side = cores if len(units) > 1 else 1
    grid_workers = 1 if spec.path else cores
    shared_cores = None if spec.path or side_by_side == 1 else Cores(cores)
    tap_sets.plan(units)

    def search(unit: tuple[int, int]) -> tuple[Selection, float]:
        c, r = unit
        subset, shared = tap_sets.take(c)
        started = time.perf_counter()
        sharing = Sharing(shared, tap_sets.choices[c].name, grid_workers, shared_cores)
        selection = select(replace(spec, grid=grids[r]), subset, runs[r].balance, seed, tta, runs[r].loss, mode,
                           sharing)
        tap_sets.done(c)
        return selection, time.perf_counter() - started

    with _one_blas_thread() if spec.path else nullcontext():
        if side_by_side > 1 and len(units) > 1:
            with ThreadPoolExecutor(max_workers=side_by_side) as pool:
                return dict(zip(units, pool.map(search, units)))
        return {unit: search(unit) for unit in units}


def _merged(first: Selection, rest: Selection) -> Selection:
    """One selection over the candidates of both (``first``'s come first in the grid), choosing as ``select``
    does."""
    candidates = [*first.candidates, *rest.candidates]
    winner = first if best_candidate(candidates) < len(first.candidates) else rest
    return replace(winner, candidates=candidates)


def _kept(request: str, data: FeatureSet, tried: list[tuple[TapChoice, Selection]], seconds: float,
          seed: int, *, stand_in: str | None = None) -> TapSearch:
    """The candidate with the best score on the selection data (then the lowest log loss, then the first).
    ``stand_in``: the balance mode whose fits compared them, when not the run's own."""
    scores = [held_score(s.held.y, s.held.proba) for _, s in tried]
    best = max(range(len(tried)), key=lambda i: (scores[i][0], -scores[i][1], -i))
    record = {"request": request, "chosen": tried[best][0].name, **({"compared_with": stand_in} if stand_in else {}),
              "used": {b: list(t) for b, t in tried[best][0].taps.items()},
              "candidates": [{"name": c.name, "taps": {b: list(t) for b, t in c.taps.items()}, "accuracy": acc,
                              "log_loss": ll, "columns": _columns(data, c),
                              **compare_on_held(s.held, tried[0][1].held, len(data.class_names), seed)}
                             for (c, s), (acc, ll) in zip(tried, scores)]}
    return TapSearch(tried[best][0], tried[best][1], record, seconds)


def _one_blas_thread() -> AbstractContextManager:
    """BLAS at one thread for a warm-started path's searches (restored after): two searches side by side do not
    ask for four threads on two cores, and a run is the same whatever the cores (a matrix product's rounding
    depends on how many threads share it, and the C path's stopping points on that rounding: with two BLAS
    threads one validation photo moved a run's choice between tap sets). threadpoolctl: scikit-learn's own."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
