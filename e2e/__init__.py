"""End-to-end training (the reference notebooks' approach), measured here for the comparison."""

from clothprobe.e2e.train import e2e

__all__ = ["e2e"]
