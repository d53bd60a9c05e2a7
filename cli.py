"""The ``cli`` command: a thin typer layer over the library. Each command parses, calls one function, prints."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clothprobe._util.bounds import bounded
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS
from clothprobe.featurize.model.backbones import BACKBONES, DEFAULT_BACKBONE, RUN_BACKBONES
from clothprobe.featurize.model.taps import DEFAULT_TAPS
from clothprobe.serve.settings import DEFAULT_HOST, DEFAULT_PORT, ServeSettings

# What Ctrl-C keeps, per command (one line; ``main`` prints it and exits 130).
INTERRUPTED = {
    "featurize": "interrupted: the batches finished so far are kept next to the cache (<cache>.partial/); run the "
                 "same command again to resume from them.",
    "run": "interrupted: the caches and runs finished so far are kept, and featurize's finished batches; run the "
           "same command again to resume.",
    "fit": "interrupted: the runs finished so far are kept; the one being fitted was not written (its folder keeps "
           "its previous run). Run the same command again.",
    "e2e": "interrupted: the epochs finished so far are kept (<run>.partial/); run the same command again to resume "
           "from the last one.",
}
INTERRUPTED_ELSE = ("interrupted: nothing was left half-written (each output is replaced only once complete); run "
                    "the same command again.")


class Interrupted(Exception):
    """Ctrl-C inside ``command``, carried past Typer (which would turn it into a silent exit 130)."""

    def __init__(self, command: str | None) -> None:
        super().__init__(INTERRUPTED.get(command or "", INTERRUPTED_ELSE))


class _Group(typer.core.TyperGroup):
    def invoke(self, ctx: typer.Context):  # noqa: ANN201 - click's protocol
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(ctx.invoked_subcommand) from None


app = typer.Typer(
    cls=_Group,
    help="clothprobe: classify clothing photos from frozen CNN embeddings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # piped: no 80-column squeeze


err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show TensorFlow's and OpenVINO's own start-up and "
                                                            "log lines.")] = False,
) -> None:
    """clothprobe: classify clothing photos from frozen CNN embeddings."""
    from clothprobe._util.appsetup import one_line_warnings, quiet_tensorflow

    if not verbose:
        quiet_tensorflow()
    one_line_warnings(lambda line: err.print(Text("warning: ", style="yellow") + Text(line)))


class TTA(str, Enum):
    none = "none"
    flip = "flip"


class EngineKind(str, Enum):
    local = "local"
    ray = "ray"


# Options more than one command takes, declared once (the default stays with each command).
Engine = Annotated[EngineKind, typer.Option(
    help="local (this process) or ray (a Ray cluster; needs pip install \"clothprobe\\[ray]\"). predict: ray scores a "
         "large folder into --output (CSV or Parquet).")]
Address = Annotated[str | None, typer.Option(
    help="--engine ray: join this Ray cluster (HOST:PORT, or auto) instead of starting a local Ray runtime.")]
Workers = Annotated[int | None, typer.Option(
    help="--engine ray: model workers, one loaded model each (default: 1 locally, one per node on a cluster).")]
DataFolder = Annotated[Path, typer.Option("--data", help="Dataset folder: DIR/<split>/<class>/<image>.")]
Weights = Annotated[str, typer.Option(
    help="'imagenet' (offline dir from CLOTHPROBE_WEIGHTS_DIR, Keras cache, then download), a weights file or "
         "directory, or 'none' (random, for smoke tests).")]
Clf = Annotated[str, typer.Option(help="logreg, lgbm, dense, or all.")]
Balance = Annotated[str, typer.Option(help="Class imbalance: none, weights (balanced class weights), smote, or all.")]
Select = Annotated[str | None, typer.Option(
    help="How settings are chosen: validation (fitted on train, scored on the validation split) or cv (repeated "
         "stratified 5-fold over train + validation, then refitted on both). Default: validation.")]
FeaturesDir = Annotated[Path, typer.Option(
    help="Where the feature caches are: <features-dir>/<dataset>/<backbone>.h5.")]
ModelsDir = Annotated[Path, typer.Option(help="Where the runs are: <models-dir>/<dataset>/<backbone>/<run>/.")]
Top = Annotated[int, typer.Option(help="Leaderboard rows to print per dataset.")]
Precision = Annotated[str, typer.Option(
    help="auto (OpenVINO: int8 calibrated on a sample of the training photos, checked against float32 and "
         "on the validation photos before first use, else bfloat16 where the CPU has bf16 units, else "
         "float32), float32, bfloat16, or int8.")]
# A labels table instead of folders (featurize, run): declared once; _labels_table() turns them into a LabelsTable.
Labels = Annotated[Path | None, typer.Option(help=(
    "A labels table (CSV, TSV or Parquet) listing the photos with their labels; --data is then the image folder "
    "its photo names are relative to (see docs/guide/tables.md)."))]
ImageColumn = Annotated[str | None, typer.Option(help=(
    "--labels: the column naming each photo (a path inside --data, with or without its extension) [default: "
    "image, else path]."))]
LabelColumn = Annotated[str, typer.Option(help="--labels: the column of labels.")]
SplitColumn = Annotated[str | None, typer.Option(help=(
    "--labels: a column of splits (train, validation or val, test); it wins over --proportions [default: split, "
    "when the table has it]."))]
GroupColumn = Annotated[str | None, typer.Option(help=(
    "--labels: a column of groups (a sender, a shop): split by it, so no group has photos in two splits."))]
Classes = Annotated[str | None, typer.Option(help=(
    "--labels: comma-separated labels to keep, spelled as in the table; rows of other labels are left out and "
    "counted [default: every label]."))]
Where = Annotated[list[str] | None, typer.Option(help=(
    "--labels: keep only the rows where COLUMN=VALUE, e.g. kids=False (repeat it: every one must hold)."))]
Separator = Annotated[str | None, typer.Option(help=(
    "--labels: the field separator of a text table, one character or 'tab' [default: ',', a tab for .tsv]."))]
Proportions = Annotated[str, typer.Option(help=(
    "--labels without a split column: train/validation/test percentages of the seeded split, stratified by "
    "class and grouped by --group-column."))]


def _labels_table(labels: Path | None, seed: int, *, image_column: str | None, label_column: str,
                  split_column: str | None, group_column: str | None, classes: str | None, where: list[str] | None,
                  separator: str | None, proportions: str):  # noqa: ANN202 - a LabelsTable or None
    """The table options as a ``LabelsTable`` (None without --labels, when none of them may be given)."""
    from clothprobe.featurize.splits import DEFAULT_PROPORTIONS, parse_proportions
    from clothprobe.featurize.table import LabelsTable

    shares = parse_proportions(proportions)
    if labels is None:
        given = [name for name, value in (("--image-column", image_column), ("--split-column", split_column),
                                          ("--group-column", group_column), ("--classes", classes),
                                          ("--where", where), ("--separator", separator)) if value]
        given += ["--label-column"] * (label_column != "label") + ["--proportions"] * (shares != DEFAULT_PROPORTIONS)
        if given:
            raise ClothprobeError(f"{', '.join(given)}: for a labels table; give --labels TABLE too.")
        return None
    kept = tuple(c.strip() for c in (classes or "").split(",") if c.strip())
    return LabelsTable(labels, image_column=image_column, label_column=label_column, split_column=split_column,
                       group_column=group_column, classes=kept, where=tuple(where or ()), separator=separator,
                       proportions=shares, seed=seed)


TAPS_HELP = ("Layers whose average-pooled outputs are cached side by side: final, all, or names (e.g. "
             "block13_out,final) [default: all; see docs/guide/taps.md].")


def _engine(ctx: typer.Context, kind: EngineKind, address: str | None, workers: int | None,  # noqa: ANN202
            threads: int | None = None):
    """The engine the options ask for, as a context manager: None (the library's default, local) or a
    ``RayEngine`` that disconnects at the end (``threads``: each worker's). Ray's own INFO lines are kept off
    the terminal unless --verbose."""
    if kind is EngineKind.local:
        if address is not None or workers is not None:
            raise ClothprobeError("--address and --workers are for --engine ray.")
        return nullcontext(None)
    import logging

    from clothprobe.featurize.engines.ray import RayEngine, check_address

    check_address(address)
    verbose = ctx.find_root().params.get("verbose")
    if address is not None:
        from clothprobe._util.appsetup import ray_join_settings

        ray_join_settings()
    engine = RayEngine(address, workers=workers, threads=threads,
                       init_options={} if verbose else {"logging_level": logging.WARNING})
    if not verbose:  # Ray Data's notices; a batch that fails is still logged (an error). Ray Serve's progress lines
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return engine


@app.command()
@bounded
def featurize(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder: DIR/<split>/<class>/<image> or DIR/<class>/<image>; with --labels, the image folder "
             "(default: the folder featurized last under --features-dir).")] = None,
    backbone: Annotated[str, typer.Option(
        help=f"A registry name ({', '.join(BACKBONES)}), onnx:PATH or keras:PATH.")] = DEFAULT_BACKBONE,
    weights: Weights = "imagenet",
    out_path: Annotated[Path | None, typer.Option("--out", help=(
        "Cache file (default: features/<dataset>/<backbone>.h5). Only a clothprobe cache is ever replaced."))] = None,
    features_dir: FeaturesDir = Path("features"),
    batch_size: Annotated[int | None, typer.Option(
        help="Images per inference batch; memory grows with it [default: the fastest measured for the model on "
             "this machine, recorded in its store entry].")] = None,
    precision: Precision = "auto",
    runtime: Annotated[str, typer.Option(
        help="auto (OpenVINO on a CPU-only machine, else Keras/TensorFlow), keras or openvino.")] = "auto",
    tta: Annotated[TTA, typer.Option(help="'flip' also caches the horizontally flipped view, for TTA in fit.")] = TTA.none,
    strict: Annotated[bool, typer.Option(
        help="Stop at the first file that cannot be used instead of skipping it; refuse to rebuild a damaged "
             "cache.")] = False,
    image_size: Annotated[int | None, typer.Option(help="Override the backbone's input size (changes the cache).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images above this many pixels (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    seed: Annotated[int, typer.Option(help="Seed for random weights (--weights none) and the int8 calibration sample.")] = 0,
    rebuild: Annotated[bool, typer.Option(
        help="Replace a cache of another clothprobe schema version, or of another dataset's photos.")] = False,
    calibration: Annotated[Path | None, typer.Option(
        help="int8: calibrate on the photos under this folder instead of the training split.")] = None,
    calibration_size: Annotated[int | None, typer.Option(
        help="int8: how many photos calibrate the quantization [default: 300].")] = None,
    engine: Engine = EngineKind.local,
    address: Address = None,
    workers: Workers = None,
    taps: Annotated[str | None, typer.Option(help=TAPS_HELP)] = None,
    labels: Labels = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = "label",
    split_column: SplitColumn = None,
    group_column: GroupColumn = None,
    classes: Classes = None,
    where: Where = None,
    separator: Separator = None,
    proportions: Proportions = "70/15/15",
) -> None:
    """Run a frozen ImageNet conv base once over DATA and cache pooled embeddings in HDF5."""
    from clothprobe._util.appsetup import govern_pixels
    from clothprobe.featurize import featurize as run_featurize
    from clothprobe.featurize.catalog import last_data

    govern_pixels(max_pixels)
    table = _labels_table(labels, seed, image_column=image_column, label_column=label_column,
                          split_column=split_column, group_column=group_column, classes=classes, where=where,
                          separator=separator, proportions=proportions)
    if data is None and table is not None:
        raise ClothprobeError("--labels: give --data too, the image folder the table's photo names are relative to.")
    if data is None:
        data = last_data(features_dir)
        if data is None:
            raise ClothprobeError(f"Say which images to featurize: --data DIR (nothing featurized yet under "
                                  f"{features_dir}).")
        err.print(Text(f"--data {data} (the folder featurized last under {features_dir})"))
    with _engine(ctx, engine, address, workers) as chosen:
        result = run_featurize(
            data, backbone=backbone, out=out_path, features_dir=features_dir, weights=weights,
            batch_size=batch_size, precision=precision, runtime=runtime, tta=tta is TTA.flip, strict=strict,
            image_size=image_size, max_pixels=max_pixels, seed=seed, progress=sys.stderr.isatty(), rebuild=rebuild,
            calibration=calibration, engine=chosen, labels=table,
            **({"calibration_size": calibration_size} if calibration_size is not None else {}),
            **({"taps": taps} if taps is not None else {}),
        )
    _print_featurized(result)


def _print_featurized(result) -> None:  # noqa: ANN001 - a clothprobe.featurize.FeaturizeResult
    if result.damaged:
        err.print(Text.assemble(("cache damaged", "yellow"), f" ({result.damaged}): rebuilt from the images"))
    for change in result.invalidated:
        err.print(Text.assemble(("cache invalidated", "yellow"), f" ({change}): every image recomputed"))
    table = Table(title=Text(f"{result.backbone} embeddings ({result.runtime}, {result.precision})"))
    for col in ("split", "images"):
        table.add_column(col)
    for split, n in result.images.items():
        table.add_row(split, str(n))
    out.print(table)
    if result.table is not None:
        _print_table_record(result.table)
    rate = f", {result.images_per_second:.1f} img/s" if result.computed else ""
    known = f" ({result.remembered} known from earlier runs, not tried again)" if result.remembered else ""
    out.print(
        f"computed {result.computed}{rate}; reused {result.reused} (resumed {result.resumed}); "
        f"removed {result.removed}; skipped {len(result.skipped)}{known}; {result.seconds:.1f} s"
    )
    for path, reason in result.skipped:
        err.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"))
    state = "up to date" if result.up_to_date else "written"
    out.print(Text(f"cache {state}: {result.cache_path} ({result.cache_megabytes:.1f} MB)"))


def _print_table_record(record) -> None:  # noqa: ANN001 - a clothprobe.featurize.table.TableRecord
    left = ", ".join(f"{why} {n}" for why, n in record.left_out.items())
    out.print(Text(f"{record.table}: {record.images} photo(s) listed and kept" + (f"; left out: {left}" if left else "")
                   + (f"; {record.missing} not found (skipped)" if record.missing else "")))
    out.print(Text(record.describe()))


class ExportPrecision(str, Enum):
    float32 = "float32"
    int8 = "int8"


@app.command()
@bounded
def export(
    source: Annotated[Path, typer.Argument(help=(
        "A run directory (cli fit, cli e2e): written as one ONNX file. A feature cache (.h5, cli featurize): "
        "written as Parquet."))],
    out_path: Annotated[Path, typer.Option("--out", help=(
        "The file to write: FILE.onnx for a run, FILE.parquet for a cache (replaced atomically; an existing file "
        "only if cli export wrote it)."))],
    precision: Annotated[ExportPrecision | None, typer.Option(help=(
        "A run's ONNX file: float32 (default: the run's own numbers) or int8 (its backbone quantized, QDQ, "
        "calibrated on the run's calibration photos or --calibration)."), show_default=False)] = None,
    calibration: Annotated[Path | None, typer.Option(help=(
        "With --precision int8: a folder of photos to calibrate on instead of the ones the run's cache recorded "
        "(a float run records none)."))] = None,
    weights: Annotated[str | None, typer.Option(
        help="A run's backbone weights file or directory, if not found as for featurize; checked against the "
             "run's sha256.")] = None,
) -> None:
    """A run as one portable ONNX file (uint8 images in; probabilities, and the open-set score and threshold of a
    run fitted with --unknown, out: plain onnxruntime runs it), or a cache as Parquet: one row per image (split,
    path, label, class, sha256) with its embedding as a fixed-size list of float32 (and the flipped view's, if
    cached), the recipe in the file's metadata."""
    from clothprobe.export.build import export as run_export

    result = run_export(source, out_path, precision=precision.value if precision else None, calibration=calibration,
                        weights=weights)
    if result.kind == "parquet":
        out.print(Text(f"wrote {result.rows} rows to {result.path}"))
        return
    m = result.model
    calibrated = f", calibrated on {result.calibration_photos} photos" if result.calibration_photos else ""
    openset = f"; open set: {m.openset['score']} < {m.openset['threshold']:.4g} is unknown" if m.openset else ""
    out.print(Text(f"wrote {result.path} ({result.megabytes:.1f} MB, {m.precision}{calibrated}) in "
                   f"{result.seconds:.0f} s: {len(m.classes)} classes, {m.input_size} px uint8 RGB in{openset}"))


def _pct(block, key: str = "accuracy") -> str:  # noqa: ANN001 - a rundir.SplitMetrics or None
    return f"{100 * getattr(block, key):.1f}" if block is not None else "-"


@app.command()
@bounded
def fit(
    data: Annotated[Path | None, typer.Option(
        help="The dataset folder that was featurized (its name picks the caches). Default: the only dataset "
             "featurized under --features-dir.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name under --features-dir (instead of --data).")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Cache(s) to fit on: a featurized backbone (xception, vgg16, onnx:PATH...), or several joined: "
             f"vgg16+xception [default: {DEFAULT_BACKBONE} where the dataset has its cache, else its only one].",
        show_default=False)] = None,
    clf: Clf = "logreg",
    balance: Balance = "weights",
    tta: Annotated[bool, typer.Option(help="Average probabilities of the original and flipped views (cache made with --tta flip).")] = False,
    loss: Annotated[str, typer.Option(help="Dense head loss: categorical or focal.")] = "categorical",
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same model and metrics.")] = 0,
    select: Select = None,
    features_dir: FeaturesDir = Path("features"),
    models_dir: ModelsDir = Path("models"),
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory for a single --clf/--balance.")] = None,
    taps: Annotated[str, typer.Option(help=(
        "Cached taps to fit on: final, all, last-K (each backbone's last K taps), tap names, or auto (final, "
        "last-2, last-4 and all, each fitted and the best kept on the selection data, never test)."))] = "auto",
    unknown: Annotated[Path | None, typer.Option(
        help="Photos of garments outside the classes (DIR/<garment type>/<image>, apart from the dataset's folder; "
             "featurized here like the dataset): each run learns to answer 'unknown'. Half of them (seeded, per "
             "type) and the validation split choose the score and threshold; test and the other half measure "
             "them.")] = None,
    negatives: Annotated[Path | None, typer.Option(
        help="With --unknown: photos of other garments (a folder, not the --unknown one) the distance scores "
             "contrast with (outlier exposure: the knn_negatives score).")] = None,
    unknown_cost: Annotated[float, typer.Option(
        help="With --unknown: the percentage points of validation accuracy the reject threshold may cost (photos "
             "the head gets wrong are rejected freely); higher rejects more unknown garments.")] = 1.0,
) -> None:
    """Train classifiers on cached embeddings; settings chosen without the test split, test scored once."""
    from clothprobe.classifiers import fit as run_fit
    from clothprobe.classifiers.select import DEFAULT_SELECT

    name = dataset or (data.expanduser().resolve().name if data else None)
    table = Table()
    for col in ("run", "selection", "val acc", "test acc", "test macro-F1", "fit s", "settings"):
        table.add_column(col, no_wrap=col != "settings")

    def show(result) -> None:  # noqa: ANN001 - a FitResult
        m = result.metrics
        err.print(Text(f"{m.run}: val {_pct(m.validation)}%  ({m.fit_seconds:.1f} s) -> {result.run_dir}"))
        tap_set = {"taps": m.taps["chosen"]} if m.taps else {}
        if m.openset is not None:
            _print_openset(m.run, m.openset)
        table.add_row(*(Text(c) for c in (m.run, m.selection, _pct(m.validation), _pct(m.test),
                                          _pct(m.test, "macro_f1"), f"{m.fit_seconds:.1f}",
                                          json.dumps({**m.params, **m.chosen, **tap_set}))))

    results = run_fit(name, backbone=backbone, clf=clf, balance=balance, tta=tta, loss=loss, seed=seed,
                      select=select or DEFAULT_SELECT, features_dir=features_dir, models_dir=models_dir, out=out_dir,
                      on_result=show, taps=taps, unknown=unknown, negatives=negatives, unknown_cost=unknown_cost,
                      data_dir=data)
    table.title = Text(f"{results[0].metrics.dataset}: {results[0].metrics.backbone}")
    out.print(table)


def _print_openset(run: str, figures: dict) -> None:
    """The reject option a fit chose, and each score measured on test knowns + the reporting unknowns."""
    reported = figures.get("report")
    chosen = f"{run}: 'unknown' below {figures['score']} {figures['threshold']:.4g}"
    if reported is None:
        err.print(Text(chosen + " (no test split: not measured)"))
        return
    err.print(Text(f"{chosen}: keeps {100 * reported['known_kept']:.1f}% of test photos, rejects "
                   f"{100 * reported['unknown_rejected']:.1f}% of unknown ones; test accuracy "
                   f"{100 * reported['accuracy']:.1f}% -> {100 * reported['accuracy_with_reject']:.1f}% "
                   f"(rejected counted wrong)"))
    table = Table(title=Text(f"{run}: open-set scores on {reported['n_known']} test + {reported['n_unknown']} "
                             f"unknown photos (95% intervals)"))
    for col in ("score", "tuning AUROC", "AUROC", "FPR@95"):
        table.add_column(col, no_wrap=True)
    for name, f in reported["scores"].items():
        mark = " (chosen)" if name == figures["score"] else ""
        table.add_row(Text(name + mark), f"{figures['tuning_auroc'].get(name, float('nan')):.3f}",
                      f"{f['auroc']:.3f} [{f['auroc_ci'][0]:.3f}, {f['auroc_ci'][1]:.3f}]",
                      f"{f['fpr95']:.3f} [{f['fpr95_ci'][0]:.3f}, {f['fpr95_ci'][1]:.3f}]")
    out.print(table)


def _print_top(report, rows: int) -> None:  # noqa: ANN001 - a clothprobe.report.Report
    from clothprobe.report.render import SUMMARY_COLUMNS

    for folder, why in report.skipped:
        err.print(Text.assemble(("skipped run", "yellow"), f" {folder}: {why}"))
    for section in report.sections:
        board = section.tables[0]
        table = Table(title=Text(f"{section.dataset}: top {min(rows, len(board.rows))} of {len(board.rows)} runs, "
                                 f"by validation accuracy"))
        for col in SUMMARY_COLUMNS:
            table.add_column(col, no_wrap=True)
        for row in board.rows[:rows]:
            table.add_row(*(Text(str(row[board.header.index(col)])) for col in SUMMARY_COLUMNS))
        out.print(table)
    out.print(Text(f"report: {report.html_path}\n        {report.md_path}"))


@app.command()
@bounded
def report(
    models_dir: ModelsDir = Path("models"),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for index.html, report.md and img/.")] = Path("reports"),
    top: Top = 5,
) -> None:
    """Compare every finished run with the end-to-end results, one leaderboard per dataset:
    reports/index.html and reports/report.md."""
    from clothprobe.report import build_report

    _print_top(build_report(models_dir, out_dir), top)


@app.command("run")
@bounded
def run_job(
    data: Annotated[Path, typer.Option(help=(
        "Dataset folder: DIR/<split>/<class>/<image>, or DIR/<class>/<image>; with --labels, the image folder.")),
    ],
    backbones: Annotated[str, typer.Option(help="Comma-separated backbones; each alone and all joined are fitted.")] = RUN_BACKBONES,
    weights: Weights = "imagenet",
    clf: Clf = "all",
    balance: Balance = "all",
    tta: Annotated[bool, typer.Option(help="Cache the flipped view and average both views' probabilities.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for every stage.")] = 0,
    select: Select = None,
    taps: Annotated[str, typer.Option(help=(
        "Layers each backbone caches, as for featurize: all (every tap, one pass), final, or names; logistic "
        "regression then chooses its tap set on the selection data (fit --taps auto), LightGBM and the dense "
        "head take the final tap."))] = DEFAULT_TAPS,
    precision: Precision = "auto",
    features_dir: FeaturesDir = Path("features"),
    models_dir: ModelsDir = Path("models"),
    reports_dir: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("reports"),
    top: Top = 5,
    labels: Labels = None,
    image_column: ImageColumn = None,
    label_column: LabelColumn = "label",
    split_column: SplitColumn = None,
    group_column: GroupColumn = None,
    classes: Classes = None,
    where: Where = None,
    separator: Separator = None,
    proportions: Proportions = "70/15/15",
) -> None:
    """The main job: featurize with each backbone, fit every classifier and balance mode, write the report.
    Every option is checked before any featurizing."""
    from clothprobe.classifiers.select import DEFAULT_SELECT
    from clothprobe.job import run_all

    def featurized(r) -> None:  # noqa: ANN001
        err.print(Text(f"featurized {r.backbone}: computed {r.computed}, reused {r.reused}, skipped {len(r.skipped)} "
                       f"({r.seconds:.0f} s) -> {r.cache_path}"))
        for path, reason in r.skipped:
            err.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"))

    def fitted(r) -> None:  # noqa: ANN001
        m = r.metrics
        err.print(Text(f"fitted {m.backbone}/{m.run}: val {_pct(m.validation)}% ({m.fit_seconds:.1f} s)"))

    table = _labels_table(labels, seed, image_column=image_column, label_column=label_column,
                          split_column=split_column, group_column=group_column, classes=classes, where=where,
                          separator=separator, proportions=proportions)
    job = run_all(data, labels=table, backbones=backbones, weights=weights, clf=clf, balance=balance, tta=tta, seed=seed,
                  select=select or DEFAULT_SELECT, taps=taps, precision=precision, features_dir=features_dir,
                  models_dir=models_dir, reports_dir=reports_dir, progress=sys.stderr.isatty(), on_featurized=featurized, on_fit=fitted)
    _print_top(job.report, top)


@app.command()
@bounded
def e2e(
    data: DataFolder,
    backbone: Annotated[str, typer.Option(help=f"{', '.join(BACKBONES)}.")] = DEFAULT_BACKBONE,
    weights: Weights = "imagenet",
    epochs: Annotated[int, typer.Option(help="Epochs of head training (the notebook: 12).")] = 12,
    image_size: Annotated[int | None, typer.Option(help="Input size (default: the backbone's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per training batch.")] = 32,
    fine_tune: Annotated[int, typer.Option(help="After the head, unfreeze the top N layers of the base (0: no fine-tuning).")] = 0,
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs of fine-tuning.")] = 4,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate for the head.")] = 1e-3,
    fine_tune_learning_rate: Annotated[float, typer.Option(help="Adam learning rate for fine-tuning.")] = 1e-5,
    balance: Annotated[str, typer.Option(help="none or weights (balanced class weights).")] = "none",
    loss: Annotated[str, typer.Option(help="categorical or focal.")] = "categorical",
    seed: Annotated[int, typer.Option(help="Seed: shuffling, augmentation and initialisation.")] = 0,
    models_dir: ModelsDir = Path("models"),
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
) -> None:
    """Train end to end on the images (the reference notebooks' approach), for the comparison in cli report."""
    from clothprobe.e2e import e2e as run_e2e

    def show(r: dict) -> None:
        err.print(f"epoch {r['epoch']} ({r['phase']}): loss {r['loss']:.3f}, train acc {100 * r['accuracy']:.1f}%, "
                  f"val acc {100 * r['val_accuracy']:.1f}% ({r['seconds']:.0f} s)")

    result = run_e2e(data, backbone=backbone, weights=weights, epochs=epochs,
                     image_size=image_size, batch_size=batch_size, fine_tune=fine_tune,
                     fine_tune_epochs=fine_tune_epochs, learning_rate=learning_rate,
                     fine_tune_learning_rate=fine_tune_learning_rate, balance=balance, loss=loss, seed=seed,
                     models_dir=models_dir, out=out_dir, progress=sys.stderr.isatty(), on_epoch=show)
    m = result.metrics
    for path, reason in m.skipped:
        err.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"))
    out.print(Text(f"{m.id}: best epoch {m.chosen['best_epoch']}, val {_pct(m.validation)}%, test {_pct(m.test)}%, "
                   f"{m.fit_seconds:.0f} s training -> {result.run_dir}"))


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


def _predict_format(fmt: Format | None, output: Path | None, engine: EngineKind) -> str:
    """What predict writes: a table on the terminal, or a score file (``ScoreWriter``); checked before any work."""
    from clothprobe.runs.predicting import score_format

    if fmt is Format.table and output is not None:
        raise ClothprobeError(f"--output {output} with --format table: a table is only printed. Give --format csv, "
                              f"json or parquet (or leave --format out to choose by the file name).")
    if engine is EngineKind.ray and output is None:
        raise ClothprobeError("--engine ray writes a file: give --output FILE.csv, FILE.json or FILE.parquet.")
    if fmt is None and output is None:
        return "table"
    return "table" if fmt is Format.table else score_format(output, fmt.value if fmt else None)


def _print_summary(result) -> None:  # noqa: ANN001 - a PredictResult
    for path, why in result.skipped:
        err.print(Text(f"skipped {path}: {why}"))
    err.print(Text(f"{len(result.predictions)} image(s) with {result.run} in {result.seconds:.1f} s "
                   f"({1000 * result.seconds_per_image:.0f} ms per image, backbone build included)"
                   + (", calibrated" if result.calibrated else "")))


def _print_table(result, top_k: int) -> None:  # noqa: ANN001 - a PredictResult
    reject = result.openset is not None
    table = Table(title=Text(result.run + (f" ('unknown' by {result.openset})" if reject else "")))
    table.add_column("image", overflow="fold")
    if reject:
        table.add_column("answer", no_wrap=True)
    for k in range(1, top_k + 1):
        table.add_column(f"#{k}", no_wrap=True)
    for p in result.predictions:
        table.add_row(Text(p.path), *([Text(p.answer)] if reject else []),
                      *(Text(f"{c} {100 * v:.1f}%") for c, v in p.top(top_k)))
    out.print(table)


@app.command()
@bounded
def predict(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    model: Annotated[Path, typer.Option(help="A run directory written by cli fit or cli e2e (models/<dataset>/<backbone>/<run>).")],
    weights: Annotated[str | None, typer.Option(
        help="Weights file or directory, if not found as for featurize; checked against the run's sha256.")] = None,
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
    fmt: Annotated[Format | None, typer.Option("--format", help=(
        "table, json, csv or parquet: the same columns in each file (path, top<k>, top<k>_p, p_<class>, skipped). "
        "Default: table, or as --output's name ends."), show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(help=(
        "Write the scores to this file (replaced atomically; never an input photo, a run's or a cache's file, "
        "nor a file clothprobe did not write). Default: stdout."))] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 16,
    calibrate: Annotated[bool, typer.Option(
        help="Temperature-scaled probabilities (the temperature was fitted at fit time on validation or "
             "out-of-fold predictions, never on test).")] = False,
    engine: Engine = EngineKind.local,
    address: Address = None,
    workers: Workers = None,
    unknown: Annotated[bool, typer.Option("--unknown/--no-unknown", help=(
        "A run fitted with --unknown answers 'unknown' below its open-set threshold (score files carry "
        "'answer' and 'openset_score'); --no-unknown always names a class."))] = True,
) -> None:
    """Classify new photos with a finished run (its own backbone, weights and preprocessing)."""
    from clothprobe.runs.predicting import check_score_output, list_images, score_catalogue, write_scores
    from clothprobe.runs.predicting import predict as run_predict

    chosen = _predict_format(fmt, output, engine)
    if output is not None:
        check_score_output(output, images, model)
    files = list_images(images)
    options = {"weights": weights, "batch_size": batch_size, "calibrate": calibrate, "unknown": unknown}
    if engine is EngineKind.ray:
        with _engine(ctx, engine, address, workers) as cluster:
            done = score_catalogue(files, model, output, engine=cluster, top_k=top_k, fmt=chosen,
                                   progress=sys.stderr.isatty(), **options)
        for path, why in done.skipped:
            err.print(Text(f"skipped {path}: {why}"))
        err.print(Text(f"{done.scored} image(s) scored in {done.seconds:.1f} s ({done.images_per_second:.1f} img/s); "
                       f"wrote {output}"))
        return
    _engine(ctx, engine, address, workers)  # --address / --workers without --engine ray: an error
    result = run_predict(files, model, **options)
    _print_summary(result)
    if chosen == "table":
        _print_table(result, max(1, min(top_k, len(result.classes))))
        return
    write_scores(result, output, top_k, chosen)
    if output:
        err.print(Text(f"wrote {output}"))


class Strategy(str, Enum):
    margin = "margin"
    entropy = "entropy"


@app.command()
@bounded
def serve(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help=(
        "A FILE.onnx written by cli export, or a run directory (exported once into $CLOTHPROBE_HOME/exports, "
        "reused while the run is unchanged)."), show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port; the address printed says "
                                           "which).")] = DEFAULT_PORT,
    precision: Annotated[str | None, typer.Option(help=(
        "A run directory: export it as float32 or int8 [default: as cli export does]."), show_default=False)] = None,
    max_upload_mb: Annotated[int, typer.Option(help="Largest request body (413 beyond, refused as it "
                                                    "streams).")] = ServeSettings.max_upload_mb,
    max_pixels: Annotated[int, typer.Option(help="Refuse images above this many pixels (decompression bombs), "
                                                 "as featurize does.")] = DEFAULT_MAX_PIXELS,
    max_files: Annotated[int, typer.Option(help="Images in one request.")] = ServeSettings.max_files,
    max_batch: Annotated[int, typer.Option(help="Images the model runs at once, from concurrent requests (its "
                                                "memory grows with it).")] = ServeSettings.max_batch,
    batch_window_ms: Annotated[float, typer.Option(help=(
        "How long a batch's first image waits for others while more requests are arriving (a lone request "
        "never waits)."))] = ServeSettings.batch_window_ms,
    max_queue: Annotated[int, typer.Option(help="Decoded images waiting for the model (503 "
                                                "beyond).")] = ServeSettings.max_queue,
    max_requests: Annotated[int, typer.Option(help="Requests in the server at once (503 "
                                                   "beyond).")] = ServeSettings.max_requests,
    threads: Annotated[int | None, typer.Option(help=(
        "The model's CPU threads [default: every CPU of the process; --engine ray: each node's CPUs but one, "
        "shared by its replicas]."), show_default=False)] = None,
    engine: Engine = EngineKind.local,
    address: Address = None,
    workers: Annotated[int | None, typer.Option(help=(
        "--engine ray: replicas, one loaded model each (default: one per node)."))] = None,
) -> None:
    """Serve a run over HTTP until stopped: POST /predict (images in, top classes out), GET /metadata,
    GET /healthz, and a page at / to drop photos on. The server imports neither TensorFlow nor OpenVINO."""
    from clothprobe._util.appsetup import govern_pixels
    from clothprobe.serve import serve as run_serve

    govern_pixels(max_pixels)
    settings = ServeSettings(max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_files=max_files,
                             max_batch=max_batch, batch_window_ms=batch_window_ms, max_queue=max_queue,
                             max_requests=max_requests, threads=threads)
    with _engine(ctx, engine, address, workers, threads) as cluster:
        run_serve(model, host=host, port=port, precision=precision, settings=settings, engine=cluster,
                  on_ready=lambda url: out.print(Text(f"serving {model} at {url} (Ctrl-C stops)")),
                  on_export=lambda line: err.print(Text(line)))


@app.command()
@bounded
def suggest(
    images: Annotated[list[Path], typer.Argument(help="Unlabeled image files or folders of images.")],
    model: Annotated[Path, typer.Option(help="A run directory written by cli fit (models/<dataset>/<backbone>/<run>).")
                     ],
    strategy: Annotated[Strategy, typer.Option(help=(
        "How unsure the run is of a photo: margin (1 - the gap between its two most probable classes) or entropy "
        "(of its probabilities, over log of the number of classes)."))] = Strategy.margin,
    near_threshold: Annotated[float | None, typer.Option(help=(
        "Cosine from which two photos are near duplicates, collapsed into one row (default: measured on these "
        "photos, the median cosine of a photo and its mirror image)."))] = None,
    limit: Annotated[int | None, typer.Option(help="List only the first so many rows [default: every photo].")] = None,
    output: Annotated[Path | None, typer.Option(help=(
        "Write the rows to this file (CSV, JSON or Parquet, by its name or --format; replaced atomically; never an "
        "input photo, a run's or a cache's file, nor a file clothprobe did not write). Default: a table of the "
        "first 20 rows."))] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help=(
        "table, json, csv or parquet (the columns of cli predict's score files, with rank, uncertainty, "
        "near_duplicates and an empty label after path)."), show_default=False)] = None,
    top_k: Annotated[int, typer.Option(help="Classes to give per photo.")] = 3,
    weights: Annotated[str | None, typer.Option(help="Weights file or directory, as for cli predict.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 16,
    calibrate: Annotated[bool, typer.Option(help="Rank on temperature-scaled probabilities.")] = False,
) -> None:
    """Which unlabeled photos to label next: the ones the run is least sure about first, near duplicates
    collapsed into one row, as a table to label from (an empty label column)."""
    from clothprobe.runs.predicting import check_score_output
    from clothprobe.runs.ranking import SHOWN, write_suggestions
    from clothprobe.runs.ranking import suggest as run_suggest

    chosen = _predict_format(fmt, output, EngineKind.local)
    if output is not None:
        check_score_output(output, images, model)
    result = run_suggest(images, model, strategy=strategy.value, near_threshold=near_threshold, limit=limit,
                         weights=weights, batch_size=batch_size, calibrate=calibrate)
    for path, why in result.skipped:
        err.print(Text(f"skipped {path}: {why}"))
    collapsed = sum(len(s.alike) for s in result.suggestions)
    err.print(Text(f"{result.photos} photo(s) scored with {result.run} in {result.seconds:.1f} s; {collapsed} near "
                   f"duplicate(s) collapsed (cosine >= {result.near_threshold:.4f}, {result.threshold_source})"))
    if chosen != "table":
        write_suggestions(result, output, top_k, chosen)
        if output:
            err.print(Text(f"wrote {output}"))
        return
    table = Table(title=Text(f"{result.run}: label these first (most uncertain by {result.strategy})"))
    for col in ("#", "photo", "uncertainty", "guess", "near duplicates"):
        table.add_column(col, overflow="fold")
    for rank, s in enumerate(result.suggestions[:SHOWN], 1):
        guess = ", ".join(f"{c} {100 * p:.0f}%" for c, p in s.top(2))
        table.add_row(str(rank), Text(s.path), f"{s.uncertainty:.3f}", Text(guess), str(len(s.alike)))
    out.print(table)


@app.command()
@bounded
def audit(
    data: Annotated[Path | None, typer.Option(help="The dataset folder that was featurized (its name picks the cache). "
                                                   "Default: the only dataset featurized under --features-dir.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name under --features-dir (instead of --data).")] = None,
    backbone: Annotated[str, typer.Option(help="Whose embeddings to audit with (a featurized backbone).")] = "xception",
    features_dir: Annotated[Path, typer.Option(help="Where the caches are.")] = Path("features"),
    html: Annotated[Path, typer.Option(help="The page: every finding, most suspicious first, with thumbnails.")] = Path(
        "audit.html"),
    csv_out: Annotated[Path, typer.Option("--csv", help="Every finding as CSV.")] = Path("audit.csv"),
    near_threshold: Annotated[float | None, typer.Option(
        help="Cosine similarity from which two photos are near duplicates (default: measured, the median cosine of "
             "a photo and its mirror image; needs a cache made with --tta flip).")] = None,
    few: Annotated[int, typer.Option(help="List classes with fewer photos than this in a split.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the folds behind the label-issue search.")] = 0,
    groups: Annotated[Path | None, typer.Option(help=(
        "A table (CSV, TSV or Parquet) giving each photo's group (a sender, a shop), for any layout: a group with "
        "photos in two splits is listed. A cache made from a labels table with --group-column has them already."))
    ] = None,
    group_column: Annotated[str | None, typer.Option(help="--groups: the column of groups.")] = None,
    image_column: Annotated[str | None, typer.Option(help=(
        "--groups: the column naming each photo (its path, or its file name, with or without extension) "
        "[default: image, else path]."))] = None,
    separator: Separator = None,
) -> None:
    """What in a featurized dataset deserves a second look: likely label issues (cleanlab), exact and near
    duplicates, leaks between splits (near duplicates, groups), small classes. Nothing in the dataset is changed."""
    from clothprobe.audit import audit as run_audit
    from clothprobe.featurize.table import LabelsTable

    if groups is None and (group_column or image_column or separator):
        raise ClothprobeError("--group-column, --image-column and --separator are for --groups TABLE.")
    name = dataset or (data.expanduser().resolve().name if data else None)
    table = None if groups is None else LabelsTable(groups, image_column=image_column, group_column=group_column,
                                                    separator=separator)
    result = run_audit(name, backbone, features_dir, html=html, csv=csv_out, seed=seed,
                       near_threshold=near_threshold, few=few, groups=table)
    table = Table(title=Text(f"audit: {len(result.findings)} finding(s), most suspicious first"))
    for col in ("kind", "suspicion", "photo", "why"):
        table.add_column(col, overflow="fold")
    for f in result.findings[:10]:
        table.add_row(Text(f.kind), f"{f.suspicion:.3f}", Text(f"{f.split}/{f.path}" if f.path else f.split),
                      Text(f.detail + (f" ({f.other_split} {f.other_path})" if f.other_path else "")))
    out.print(table)
    out.print(Text(", ".join(f"{n} {k}" for k, n in sorted(result.counts.items())) or "nothing found"))
    out.print(Text(f"near duplicates from cosine {result.near_threshold:.4f} ({result.threshold_source})"))
    out.print(Text(f"wrote {result.html_path} and {result.csv_path}"))


cache_app = typer.Typer(help="The compiled-model store ($CLOTHPROBE_HOME, default ~/.cache/clothprobe).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
@bounded
def cache_list() -> None:
    """List the stored models: recipe, size, last use, and the runtime self-checks done on each machine."""
    import datetime

    from clothprobe.featurize.model.store import ModelStore

    store = ModelStore()
    table = Table(title=f"compiled models in {store.root}")
    for col in ("key", "backbone", "runtime", "precision", "input", "MB", "last used", "self-checks"):
        table.add_column(col, no_wrap=col != "self-checks")
    for e in store.entries():
        checks = "; ".join(f"{'ok' if c.passed else 'FAILED'} {k} (cosine {c.cosine_min:.4f})"
                           for k, c in e.checks.items())
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        table.add_row(e.key, e.recipe.backbone, e.recipe.runtime, e.recipe.precision, str(e.recipe.input_size),
                      f"{e.size_bytes / 1e6:.1f}", used, Text(checks or "-"))
    out.print(table)
    for path in store.damaged():
        err.print(Text(f"damaged or left by a killed build: {path} (cli cache prune removes it)"))
    for path in store.foreign():
        err.print(Text(f"not made by the store, left alone: {path} (move it out of {store.root})"))
    compiled = store.foreign_compile_cache()
    if compiled is not None:
        err.print(Text(f"not made by the store, left alone: {compiled}; OpenVINO's compile cache is off until it "
                       f"is moved away (delete it if it holds an older clothprobe's .blob files)"))


@cache_app.command("prune")
@bounded
def cache_prune(
    key: Annotated[str | None, typer.Option(help="Remove this entry (a key from `cli cache list`).")] = None,
    unused_days: Annotated[float | None, typer.Option(help="Remove entries not used for this many days.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every stored model, and every run exported for "
                                                    "serving (`cli serve RUN`).")] = False,
) -> None:
    """Remove stored models (they are rebuilt when needed); damaged entries and leftovers always go."""
    from clothprobe.featurize.model.store import ModelStore
    from clothprobe.serve.exports import prune_exports

    store = ModelStore()
    removed = store.prune(key=key, unused_days=unused_days, everything=all_)
    entries = [p for p in removed if p.parent == store.root]
    exports = prune_exports(store.home) if all_ else []
    for path in entries + exports:
        out.print(Text(f"removed {path}"))
    blobs = len(removed) - len(entries)
    out.print(f"{len(entries)} removed" + (f"; {blobs} compiled file(s) cleared from {store.home / 'compiled'}"
                                          if blobs else "") + (f"; {len(exports)} served export(s)" if exports else ""))


def main() -> None:
    """Entry point: user-facing errors become one clear message and exit code 2, never a traceback."""
    try:
        app()
    except ClothprobeError as error:
        err.print(Text("error: ", style="bold red") + Text(str(error)), highlight=False)
        sys.exit(2)
    except OSError as error:  # a disk full, a folder not writable: the system's own message, one line
        err.print(Text("error: ", style="bold red") + Text(str(error)), highlight=False)
        sys.exit(2)
    except Interrupted as interrupted:
        _exit_interrupted(str(interrupted))
    except KeyboardInterrupt:  # before any command ran
        _exit_interrupted(INTERRUPTED_ELSE)


def _exit_interrupted(line: str) -> None:
    """Say what Ctrl-C kept and leave with 130 at once. Every ``finally`` has run by now (temporaries removed,
    locks released); interpreter shutdown is skipped, because a native thread pool caught mid-task (a C++
    ``std::thread`` still running) aborts the process there ("terminate called without an active exception",
    exit -6) about one time in six, after the line was printed."""
    import os

    err.print(Text(line), highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    main()
