"""``cli audit``: what in a featurized dataset deserves a second look (label issues, duplicates, leaks, small
classes), as an HTML page with thumbnails and a CSV. Nothing in the dataset is changed."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"audit": "run", "AuditResult": "run", "Finding": "findings"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
