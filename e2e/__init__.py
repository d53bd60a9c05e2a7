"""End-to-end training (the reference notebooks' approach), measured here for the comparison."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"e2e": "train"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
