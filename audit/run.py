"""``audit()``: read a dataset's cache, run every check, write the CSV and the page. Reads only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.audit import findings as checks
from clothprobe.audit.findings import Finding, Rows
from clothprobe.errors import ClothprobeError

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
    """Every photo of the dataset's ``backbone`` cache, all splits together, and the folder it was made from."""
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.catalog import find_cache

    cache = load_features(find_cache(features_dir, dataset, backbone))
    parts = [(name, s) for name, s in cache.splits.items() if len(s)]
    if not parts:
        raise ClothprobeError(f"The cache {cache.path} holds no photos; featurize the dataset first.")
    flips = [s.flip for _, s in parts]
    rows = Rows(X=np.vstack([s.embeddings for _, s in parts]), y=np.concatenate([s.labels for _, s in parts]),
                split=np.concatenate([[name] * len(s) for name, s in parts]).astype(object),
                path=np.concatenate([s.paths for _, s in parts]), sha256=np.concatenate([s.sha256 for _, s in parts]),
                class_names=cache.class_names, X_flip=None if any(f is None for f in flips) else np.vstack(flips))
    return rows, cache.header.data_root or None


def near_threshold_of(rows: Rows, given: float | None) -> tuple[float, str]:
    if given is not None:
        if not 0 < given <= 1:
            raise ClothprobeError(f"--near-threshold is a cosine similarity in (0, 1], got {given}.")
        return given, "given (--near-threshold)"
    if rows.X_flip is None:
        raise ClothprobeError("The near-duplicate threshold is measured on the mirrored view, which this cache lacks: "
                              "featurize with --tta flip, or give --near-threshold (a cosine, e.g. 0.95).")
    return checks.mirror_threshold(rows.X, rows.X_flip), "measured: median cosine of a photo and its mirror image"


def audit(dataset: str | None = None, backbone: str = "xception", features_dir: str | Path = "features", *,
          html: str | Path = "audit.html", csv: str | Path = "audit.csv", seed: int = 0,
          near_threshold: float | None = None, few: int = DEFAULT_FEW) -> AuditResult:
    """Audit the featurized ``dataset``: label issues (cleanlab, out-of-fold probabilities), exact and near
    duplicates, test photos near training photos, classes with fewer than ``few`` photos in a split."""
    from clothprobe._util.outputs import check_output
    from clothprobe.audit import page
    from clothprobe.featurize.catalog import resolve_dataset

    html_path = check_output(html, option="--html", ours=page.is_audit_html, stream=True)
    csv_path = check_output(csv, option="--csv", ours=page.is_audit_csv, stream=True)
    if html_path.resolve() == csv_path.resolve():
        raise ClothprobeError(f"--html and --csv name the same file {html}; give two names.")
    rows, root = load_rows(dataset, backbone, features_dir)
    threshold, source = near_threshold_of(rows, near_threshold)
    issues, C = checks.label_issues(rows, seed)
    found = [*checks.exact_duplicates(rows), *checks.near_duplicates(rows, threshold), *issues,
             *checks.few_photos(rows, few)]
    found.sort(key=lambda f: (-f.suspicion, f.kind, f.split, f.path))
    page.write_csv(found, csv_path)
    counts = Counter(f.kind for f in found)
    notes = [f"{len(rows.y)} photos, {len(rows.class_names)} classes, {backbone} embeddings. Nothing was changed.",
             "Found: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"),
             (f"Near duplicates: cosine >= {threshold:.4f} ({source}). Label issues: cleanlab on out-of-fold "
              f"probabilities of a logistic regression ({checks.OOF_FOLDS}-fold, seed {seed}, C = {C:g}, the lowest "
              f"out-of-fold log loss of {', '.join(map(str, checks.OOF_C))}).")]
    page.write_html(found, html_path, title=f"Audit of {resolve_dataset(features_dir, dataset)}", notes=notes,
                    root=Path(root) if root else None)
    return AuditResult(found, threshold, source, html_path, csv_path)
