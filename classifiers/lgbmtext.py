"""LightGBM's text model format, checked before LightGBM reads it (``classifiers/modelio.py`` calls ``check``).

LightGBM trusts its model file: a split feature or a child index out of range is read from wherever it points
(a segfault, or a silently wrong probability), and a child that points back up the tree loops forever. A run's
file hashes can be recomputed by whoever edits it, so the trees are checked here, in Python, from the text:

- the header: ``num_class``, ``num_tree_per_iteration``, ``max_feature_idx``, and ``tree_sizes`` (the bytes of
  each tree, which LightGBM uses to find them) matching the trees that follow;
- each tree: ``num_leaves`` >= 1; for ``n`` leaves, ``n - 1`` values of ``split_feature`` (each from 0 to
  ``max_feature_idx``), ``threshold`` and ``decision_type`` (numerical splits only: no categorical split, no linear
  tree; clothprobe fits neither), ``left_child`` and ``right_child``, and ``n`` finite ``leaf_value`` numbers; the
  children make a tree: from the root, every internal node and every leaf is reached exactly once.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from clothprobe.errors import ClothprobeError

MAX_BYTES = 1 << 30  # larger than any model clothprobe fits (200 trees x 10 classes is a few MB)
TREE = "Tree="
END = "end of trees"
_NUMERICAL = {0, 2, 4, 6, 8, 10}  # decision_type bits: 1 categorical (refused), 2 default left, 4-8 missing type


class _Bad(ValueError):
    """What is wrong, in words."""


def _fields(block: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in block.splitlines() if "=" in line)


def _ints(values: dict[str, str], key: str, n: int) -> list[int]:
    parts = values.get(key, "").split()
    if len(parts) != n or not all(re.fullmatch(r"-?[0-9]{1,10}", p) for p in parts):
        raise _Bad(f"{key} should be {n} whole number(s)")
    return [int(p) for p in parts]


def _floats(values: dict[str, str], key: str, n: int, finite: bool) -> None:
    try:
        numbers = [float(p) for p in values.get(key, "").split()]
    except ValueError:
        raise _Bad(f"{key} should be {n} number(s)") from None
    if len(numbers) != n or any(math.isnan(v) or (finite and math.isinf(v)) for v in numbers):
        raise _Bad(f"{key} should be {n} {'finite ' if finite else ''}number(s)")


def _one(values: dict[str, str], key: str, low: int = 0) -> int:
    (value,) = _ints(values, key, 1)
    if value < low:
        raise _Bad(f"{key} should be at least {low}, got {value}")
    return value


def _reaches_each_node_once(left: list[int], right: list[int], leaves: int) -> bool:
    """From the root (node 0), every internal node and every leaf (child ``~leaf``) is reached exactly once."""
    seen_nodes, seen_leaves, todo = {0}, set(), [0]
    while todo:
        node = todo.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= len(left) or child in seen_nodes:
                    return False
                seen_nodes.add(child)
                todo.append(child)
            else:
                if ~child >= leaves or ~child in seen_leaves:
                    return False
                seen_leaves.add(~child)
    return len(seen_nodes) == len(left) and len(seen_leaves) == leaves


def _check_tree(block: str, features: int) -> None:
    values = _fields(block)
    leaves = _one(values, "num_leaves", low=1)
    if _one(values, "num_cat") != 0 or values.get("is_linear", "0").strip() != "0":
        raise _Bad("it has categorical splits or linear leaves, which clothprobe never fits")
    splits = leaves - 1
    _floats(values, "leaf_value", leaves, finite=True)
    if not splits:
        return
    if any(not 0 <= f < features for f in _ints(values, "split_feature", splits)):
        raise _Bad(f"a split_feature is outside 0..{features - 1}")
    if not set(_ints(values, "decision_type", splits)) <= _NUMERICAL:
        raise _Bad("a decision_type is not a numerical split")
    _floats(values, "threshold", splits, finite=False)
    if not _reaches_each_node_once(_ints(values, "left_child", splits), _ints(values, "right_child", splits), leaves):
        raise _Bad("its left_child/right_child do not make a tree (an index out of range, or a node reached twice)")


def _check_text(text: str, n_classes: int) -> None:
    head, _, rest = text.partition(TREE)
    header = _fields(head)
    expected = 1 if n_classes == 2 else n_classes  # LightGBM's binary objective has one output
    num_class = header.get("num_class", "missing").strip()[:20]
    if head.splitlines()[:1] != ["tree"] or num_class != str(expected):
        raise _Bad(f"not a LightGBM model of this run's {n_classes} classes; header: num_class={num_class}")
    per_iteration = _one(header, "num_tree_per_iteration", low=1)
    features = _one(header, "max_feature_idx") + 1
    trees_text, ended, _ = (TREE + rest).partition(END)
    blocks = [TREE + b for b in trees_text.split(TREE)[1:]]
    if not ended or not blocks or len(blocks) % per_iteration:
        raise _Bad(f"its trees are not whole iterations of {per_iteration} tree(s) ending with '{END}'")
    if "tree_sizes" in header and _ints(header, "tree_sizes", len(blocks)) != [len(b.encode()) for b in blocks]:
        raise _Bad("tree_sizes does not match the trees")
    for k, block in enumerate(blocks):
        try:
            _check_tree(block, features)
        except _Bad as err:
            raise _Bad(f"tree {k}: {err}") from None


def check(path: Path, n_classes: int) -> None:
    """Refuse, in one line naming ``path``, a LightGBM text model LightGBM could not use safely (see above)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _Bad(f"it is larger than {MAX_BYTES >> 20} MB")
        _check_text(path.read_bytes().decode("ascii"), n_classes)
    except (_Bad, UnicodeDecodeError) as err:
        why = "it is not ASCII text" if isinstance(err, UnicodeDecodeError) else str(err)
        raise ClothprobeError(f"{path} is not a readable LightGBM model ({why}); refusing to load it. Fit the "
                              f"model again.") from None
