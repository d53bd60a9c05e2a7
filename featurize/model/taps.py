"""Taps: the layers of a backbone whose global-average-pooled outputs are cached side by side.

A backbone's taps are data in its registry entry (``backbones.py``), in network order, the final layer
last. A recipe names the taps it embeds (``Recipe.taps``; empty = the final layer only, the model's own
pooled output); the compiled network computes every chosen tap in one forward pass and returns their
pooled outputs concatenated, in the recipe's order, so runners, engines and merges see one vector per
image. ``tap_layout`` says which columns belong to which tap.

Requests (``--taps``): ``final``, ``all`` or a comma-separated list of tap names (``final`` is also the
name of the last tap). ``resolve_taps`` is the one validator.

Values: the backbone's final layer is kept in float32, as a final-only recipe has always embedded it; every
other tap is rounded to float16 as it is embedded (``round_taps``), so a cache stores it in half the space
with nothing lost, and predict, ``ImageEmbedder`` and the Ray engine give the classifier the same values it
was fitted on (rounding cost 1 of 341 validation photos in bench/taps.py: docs/guide/taps.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe.errors import ClothprobeError

if TYPE_CHECKING:
    from clothprobe.featurize.model.recipe import Recipe

NTH_PREFIX = "#"  # layer locator "#Add:3": the fourth layer of class Add (Keras names those by a session counter)
FINAL = "final"
ALL = "all"
DEFAULT_TAPS = ALL  # what featurize caches unless told: every tap costs <1% of the pass (docs/guide/taps.md)
FINAL_DTYPE = "<f4"  # the final layer's values, as a final-only recipe embeds them
TAP_DTYPE = "<f2"  # every other tap's values (module docstring)


@dataclass(frozen=True)
class Tap:
    """``name``: what caches and users call it; ``layer``: the Keras layer name, or ``#Class:k`` for the
    k-th layer of that class (for layers Keras names by a counter); ``dim``: its channels."""

    name: str
    layer: str
    dim: int


def find_layer(model: Any, locator: str) -> Any:
    """The Keras layer ``locator`` names in ``model`` (see ``Tap.layer``)."""
    if locator.startswith(NTH_PREFIX):
        kind, _, k = locator[len(NTH_PREFIX):].partition(":")
        found = [layer for layer in model.layers if type(layer).__name__ == kind]
        if not -len(found) <= int(k) < len(found):
            raise ClothprobeError(f"{model.name} has {len(found)} {kind} layers, no {locator}.")
        return found[int(k)]
    return model.get_layer(locator)


def tap_model(base: Any, taps: Sequence[Tap]) -> Any:
    """One network computing every tap in a single pass: each tap's output average-pooled over space,
    concatenated in ``taps`` order (one output tensor)."""
    import keras

    outputs = [find_layer(base, tap.layer).output for tap in taps]
    pooled = [x if len(x.shape) == 2 else keras.layers.GlobalAveragePooling2D(name=f"tap_{tap.name}")(x)
              for tap, x in zip(taps, outputs)]  # a 2-D output is already one vector per image
    out = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="taps")(pooled)
    return keras.Model(base.inputs, out, name=f"{base.name}_taps")


def resolve_taps(request: str | Sequence[str] | None, available: Sequence[Tap]) -> tuple[str, ...]:
    """A ``--taps`` request -> the recipe's ``taps`` (tap names in network order; ``()`` = final only).

    ``available``: the backbone's taps (empty for a model outside the registry, which has only ``final``: ``all``
    is that one tap)."""
    names = [t.name for t in available]
    if request is None or request == FINAL or request == [FINAL] or request == (FINAL,) or (request == ALL and not names):
        return ()  # ``all`` of a model outside the registry: its only tap, the output
    if request == ALL:
        asked = list(names)
    else:
        parts = request.split(",") if isinstance(request, str) else list(request)
        asked = [names[-1] if names and p.strip() == FINAL else p.strip() for p in parts if p.strip()]
    unknown = [p for p in asked if p not in names]
    if unknown or not asked:
        have = ", ".join([FINAL, ALL, *names]) if names else f"{FINAL} or {ALL} (its output, its only tap)"
        raise ClothprobeError(f"Unknown tap(s) {', '.join(unknown) or repr(request)}; this backbone has: {have}.")
    chosen = tuple(n for n in names if n in asked)
    return () if chosen == (names[-1],) else chosen


def backbone_taps(recipe: Recipe) -> tuple[Tap, ...]:
    """The taps ``recipe``'s backbone offers (none for a model outside the registry: only its output)."""
    from clothprobe.featurize.model.backbones import get_backbone

    return get_backbone(recipe.backbone).taps if recipe.source == "keras-applications" else ()


def final_tap(recipe: Recipe) -> str:
    """The name of the tap that is ``recipe``'s backbone's final layer."""
    offered = backbone_taps(recipe)
    return offered[-1].name if offered else FINAL


def tap_names(recipe: Recipe) -> tuple[str, ...]:
    """The taps ``recipe`` embeds, by name, in column order (the final layer's name when it embeds only that)."""
    return recipe.taps or (final_tap(recipe),)


def tap_dtype(recipe: Recipe, name: str) -> str:
    """The dtype the values of tap ``name`` are kept in: float32 for the final layer, float16 for the others."""
    return FINAL_DTYPE if name == final_tap(recipe) else TAP_DTYPE


def round_taps(recipe: Recipe, x: np.ndarray) -> np.ndarray:
    """``x`` (embeddings made with ``recipe``, float32) with each tap's columns rounded to the dtype the tap is
    kept in (``tap_dtype``); a tap whose values do not fit float16 is an error naming it."""
    if not recipe.taps:
        return x
    out, column = x.copy(), 0
    for name, width in tap_layout(recipe, x.shape[1]):
        part = x[:, column : column + width]
        if tap_dtype(recipe, name) != FINAL_DTYPE and len(part):
            with np.errstate(over="ignore"):  # an overflow is the error below
                rounded = part.astype(tap_dtype(recipe, name))
            if not np.isfinite(rounded).all() and np.isfinite(part).all():
                raise ClothprobeError(f"{recipe.backbone}: tap {name} gives values beyond float16's range (largest "
                                      f"{float(np.abs(part).max()):.4g}); embed it with --taps final, or without it.")
            out[:, column : column + width] = rounded
        column += width
    return out


def tap_widths(recipe: Recipe) -> list[tuple[str, int]]:
    """``(tap name, columns)`` of each tap a tapped ``recipe`` embeds, in column order (registry widths)."""
    dims = {t.name: t.dim for t in backbone_taps(recipe)}
    return [(name, dims[name]) for name in recipe.taps]


def tap_layout(recipe: Recipe, width: int) -> list[tuple[str, int]]:
    """``(tap name, columns)`` of a ``width``-column embedding made with ``recipe``, in column order."""
    if not recipe.taps:
        return [(tap_names(recipe)[0], width)]
    layout = tap_widths(recipe)
    if sum(d for _, d in layout) != width:
        raise ClothprobeError(f"{recipe.backbone}: taps {', '.join(recipe.taps)} give {sum(d for _, d in layout)} "
                              f"columns, the embeddings have {width}.")
    return layout
