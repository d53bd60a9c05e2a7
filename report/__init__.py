"""Stage 3: every finished run (cached-feature heads and end-to-end training) in one comparison."""

from clothprobe.report.render import Report, build_report
from clothprobe.report.runs import REFERENCES, Run, collect_runs

__all__ = ["REFERENCES", "Report", "Run", "build_report", "collect_runs"]
