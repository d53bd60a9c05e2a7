"""Stage 3: every finished run (cached-feature heads and end-to-end training), one comparison per dataset."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"Report": "render", "Section": "render", "build_report": "render", "REFERENCES": "runs", "Run": "runs",
          "collect_runs": "runs"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
