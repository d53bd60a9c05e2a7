"""``audit()``: read a dataset's cache, run every check, write the CSV and the page. Reads only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clothprobe.audit import findings as checks
from clothprobe.audit.findings import Finding, Rows
from clothprobe.errors import ClothprobeError

if TYPE_CHECKING:
    from clothprobe.featurize.table import LabelsTable

DEFAULT_FEW = 20  # a class with fewer photos than this in a split is listed


@dataclass
class AuditResult:
    findings: list[Finding]
    near_threshold: float
    threshold_source: str
    html_path: Path
    csv_path: Path

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.findings))


def load_rows(dataset: str | None, backbone: str, features_dir: str | Path) -> tuple[Rows, str | None]:
    """Every photo of the dataset's ``backbone`` cache, all splits together (with their groups when the cache has
    them: a table dataset with a group column), and the folder it was made from."""
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.catalog import find_cache
    from clothprobe.featurize.table import TableRecord

    cache = load_features(find_cache(features_dir, dataset, backbone))
    parts = [(name, s) for name, s in cache.splits.items() if len(s)]
    if not parts:
        raise ClothprobeError(f"The cache {cache.path} holds no photos; featurize the dataset first.")
    flips = [s.flip for _, s in parts]
    groups = [s.groups for _, s in parts]
    grouped = all(g is not None for g in groups)
    rows = Rows(X=np.vstack([s.embeddings for _, s in parts]), y=np.concatenate([s.labels for _, s in parts]),
                split=np.concatenate([[name] * len(s) for name, s in parts]).astype(object),
                path=np.concatenate([s.paths for _, s in parts]), sha256=np.concatenate([s.sha256 for _, s in parts]),
                class_names=cache.class_names, X_flip=None if any(f is None for f in flips) else np.vstack(flips),
                group=np.concatenate(groups).astype(object) if grouped else None,
                group_column=TableRecord.from_dict(cache.header.table).group_column if grouped else "")
    return rows, cache.header.data_root or None


def with_groups(rows: Rows, groups: LabelsTable | None) -> tuple[Rows, str]:
    """``rows`` with the groups of ``groups``' table (any layout), or as the cache gave them; and where the groups
    come from, for the page ("" when there are none)."""
    from dataclasses import replace

    from clothprobe.featurize.table import read_groups

    if groups is not None:
        found = read_groups(groups, [str(p) for p in rows.path])
        listed = sum(1 for g in found if g)
        return (replace(rows, group=np.array(found, dtype=object), group_column=str(groups.group_column)),
                f"{groups.group_column} from {groups.path.name} ({listed} of {len(found)} photos listed)")
    return rows, (f"{rows.group_column} from the labels table the cache was made from" if rows.group is not None
                  else "")


def near_threshold_of(rows: Rows, given: float | None) -> tuple[float, str]:
    if given is not None:  # within (0, 1]: checked by audit() with the other options
        return given, "given (--near-threshold)"
    if rows.X_flip is None:
        raise ClothprobeError("The near-duplicate threshold is measured on the mirrored view, which this cache lacks: "
                              "featurize with --tta flip, or give --near-threshold (a cosine, e.g. 0.95).")
    return checks.mirror_threshold(rows.X, rows.X_flip), "measured: median cosine of a photo and its mirror image"


def _label_search(rows: Rows, seed: int) -> tuple[list[Finding], str]:
    """The label issues and how they were searched, or none and why not (a dataset too small for folds)."""
    if not checks.searchable(rows.y):
        counts = np.bincount(rows.y, minlength=len(rows.class_names))
        return [], (f"Label issues: not searched; out-of-fold probabilities need two classes with two photos or more "
                    f"each (photos per class: {', '.join(f'{c} {n}' for c, n in zip(rows.class_names, counts))}).")
    issues, C = checks.label_issues(rows, seed)
    return issues, (f"Label issues: cleanlab on out-of-fold probabilities of a logistic regression "
                    f"({checks.OOF_FOLDS}-fold, seed {seed}, C = {C:g}, the lowest out-of-fold log loss of "
                    f"{', '.join(map(str, checks.OOF_C))}).")


def audit(dataset: str | None = None, backbone: str = "xception", features_dir: str | Path = "features", *,
          html: str | Path = "audit.html", csv: str | Path = "audit.csv", seed: int = 0,
          near_threshold: float | None = None, few: int = DEFAULT_FEW,
          groups: LabelsTable | None = None) -> AuditResult:
    """Audit the featurized ``dataset``: label issues (cleanlab, out-of-fold probabilities), exact and near
    duplicates, near duplicates in two splits (leaks), groups with photos in two splits (the cache's, from a
    labels table with a group column, or ``groups``' table for any layout), classes with fewer than ``few``
    photos in a split."""
    from clothprobe._util.bounds import check_options
    from clothprobe._util.outputs import check_output
    from clothprobe.audit import page
    from clothprobe.featurize.catalog import resolve_dataset

    check_options(seed=seed, near_threshold=near_threshold, few=few)
    html_path = check_output(html, option="--html", ours=page.is_audit_html, stream=True)
    csv_path = check_output(csv, option="--csv", ours=page.is_audit_csv, stream=True)
    if html_path.resolve() == csv_path.resolve():
        raise ClothprobeError(f"--html and --csv name the same file {html}; give two names.")
    rows, root = load_rows(dataset, backbone, features_dir)
    rows, grouped_by = with_groups(rows, groups)
    threshold, source = near_threshold_of(rows, near_threshold)
    issues, searched = _label_search(rows, seed)
    found = [*checks.exact_duplicates(rows), *checks.near_duplicates(rows, threshold),
             *checks.groups_across_splits(rows), *issues, *checks.few_photos(rows, few)]
    found.sort(key=lambda f: (-f.suspicion, f.kind, f.split, f.path))
    page.write_csv(found, csv_path)
    counts = Counter(f.kind for f in found)
    notes = [f"{len(rows.y)} photos, {len(rows.class_names)} classes, {backbone} embeddings. Nothing was changed.",
             "Found: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"),
             f"Near duplicates: cosine >= {threshold:.4f} ({source}); a pair in two splits is a leak. {searched}",
             f"Groups: {grouped_by}." if grouped_by else "Groups: none (a table dataset's group column, or "
                                                           "cli audit --groups TABLE, gives them)."]
    page.write_html(found, html_path, title=f"Audit of {resolve_dataset(features_dir, dataset)}", notes=notes,
                    root=Path(root) if root else None)
    return AuditResult(found, threshold, source, html_path, csv_path)
