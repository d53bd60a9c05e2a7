"""Stage 3: every finished run (cached-feature heads and end-to-end training), one comparison per dataset."""

from clothprobe.report.render import Report, Section, build_report
from clothprobe.report.runs import REFERENCES, Run, collect_runs

__all__ = ["REFERENCES", "Report", "Run", "Section", "build_report", "collect_runs"]
