"""Issue 17: numeric options bounded once (one table, every command), and one validator per JSON document
(run manifest, metrics, store manifest, sidecar) with types and bounds; property-based with hypothesis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clothprobe._util.bounds import BOUNDS, Bound, option
from clothprobe.cli import app
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.sidecar import load_sidecar
from clothprobe.featurize.model.store import ModelStore, StoreEntry
from clothprobe.runs import directory as rundir

runner = CliRunner()
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                     st.lists(st.integers(), max_size=2))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


@pytest.mark.parametrize(("args", "message"), [
    (["featurize", "--data", ".", "--batch-size", "1000000000"], "--batch-size must be a whole number >= 1"),
    (["featurize", "--data", ".", "--image-size", "100000"], "--image-size must be a whole number >= 8"),
    (["featurize", "--data", ".", "--seed", "-1"], "--seed must be a whole number >= 0"),
    (["e2e", "--data", ".", "--learning-rate", "nan"], "--learning-rate must be a finite number > 0"),
    (["e2e", "--data", ".", "--learning-rate", "-1"], "--learning-rate must be a finite number > 0"),
    (["e2e", "--data", ".", "--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["report", "--top", "-1"], "--top must be a whole number >= 1"),
    (["fit", "--seed", "-1"], "--seed must be a whole number >= 0"),
    (["fit", "--unknown-cost", "101"], "--unknown-cost must be a finite number >= 0"),
    (["predict", "x.jpg", "--model", "m", "--top-k", "0"], "--top-k must be a whole number >= 1"),
    (["cache", "prune", "--unused-days", "-1"], "--unused-days must be a finite number >= 0"),
    (["cache", "prune", "--unused-days", "nan"], "--unused-days must be a finite number >= 0"),
])
def test_every_command_refuses_an_out_of_bounds_option_before_any_work(args: list[str], message: str,
                                                                       tmp_path: Path) -> None:
    res = runner.invoke(app, args, env={"CLOTHPROBE_HOME": str(tmp_path / "home")})
    assert isinstance(res.exception, ClothprobeError), res.output
    assert str(res.exception).startswith(message), res.exception
    assert not (tmp_path / "home").exists()


@given(name=st.sampled_from(sorted(BOUNDS)), value=anything)
def test_a_bound_accepts_exactly_the_values_within_it(name: str, value: object) -> None:
    bound = BOUNDS[name]
    inside = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (not bound.whole or float(value).is_integer())
              and (value > bound.low if bound.low_open else value >= bound.low) and value <= bound.high)
    if inside:
        assert bound.check(option(name), value) == value
    else:
        with pytest.raises(ClothprobeError, match=f"^{option(name)} must be"):
            bound.check(option(name), value)


@given(low=st.integers(-10, 10), span=st.integers(0, 10), value=st.floats(allow_nan=True, allow_infinity=True))
def test_non_finite_values_never_pass(low: int, span: int, value: float) -> None:
    bound = Bound(low, low + span, whole=False)
    if not math.isfinite(value):
        with pytest.raises(ClothprobeError):
            bound.check("x", value)


@pytest.fixture(scope="module")
def entry_doc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    store = ModelStore(tmp_path_factory.mktemp("home"))
    recipe = resolve_recipe(backbone="vgg16", weights=None, image_size=32, precision="float32")
    entry = store.get_or_build(recipe, lambda d: (d / "model.xml").write_text("m"))
    return entry.path, entry.to_manifest()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["key", "files", "last_used", "recipe", "checks", "store_version", "created"]),
       value=json_values)
def test_store_manifest_validator_refuses_or_accepts_never_crashes(entry_doc: tuple[Path, dict], key: str,
                                                                   value: object) -> None:
    path, doc = entry_doc
    try:
        entry = StoreEntry.from_manifest(path, {**doc, key: value})
    except ClothprobeError:
        return
    assert entry.key == path.name and all("/" not in n and n not in ("", ".", "..") for n in entry.files)
    assert math.isfinite(entry.last_used)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_hostile_runs import write_run

    return write_run(tmp_path_factory.mktemp("runs") / "r")


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["classes", "seed", "sha256", "calibration", "caches", "kind", "backbones", "model",
                            "tta"]), value=json_values)
def test_run_manifest_validator_refuses_or_accepts_never_crashes(run_dir: Path, key: str, value: object,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    doc = json.loads((run_dir / "manifest.json").read_text())
    copy = tmp_path_factory.mktemp("m")
    (copy / "manifest.json").write_text(json.dumps({**doc, key: value}))
    try:
        manifest = rundir.read_manifest(copy)
    except ClothprobeError:
        return
    assert len(set(manifest.classes)) == len(manifest.classes) >= 2 and manifest.seed >= 0
    assert all(Path(n).name == n and n not in ("..", ".") for n in manifest.sha256)
    if manifest.calibration is not None:
        assert math.isfinite(manifest.calibration.temperature) and manifest.calibration.temperature > 0


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["n", "accuracy", "macro_f1", "seed", "fit_seconds", "validation", "test"]),
       value=json_values)
def test_metrics_validator_refuses_or_accepts_never_crashes(run_dir: Path, key: str, value: object,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    doc = json.loads((run_dir / "metrics.json").read_text())
    target = doc["test"] if key in ("n", "accuracy", "macro_f1") else doc
    target[key] = value
    copy = tmp_path_factory.mktemp("m")
    (copy / "metrics.json").write_text(json.dumps(doc))
    try:
        metrics = rundir.read_metrics(copy)
    except ClothprobeError:
        return
    if metrics.test is not None:
        assert 0 <= metrics.test.accuracy <= 1 and metrics.test.n >= 0


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=anything, scale=st.one_of(st.floats(), st.integers(), st.text(max_size=3)))
def test_sidecar_validator_bounds_input_size_and_scale(tmp_path_factory: pytest.TempPathFactory, size: object,
                                                       scale: object) -> None:
    folder = tmp_path_factory.mktemp("sidecar")
    model = folder / "net.onnx"
    model.write_bytes(b"")
    (folder / "net.json").write_text(json.dumps({"input_size": size, "preprocess": {"scale": scale}}))
    try:
        sidecar = load_sidecar(model)
    except ClothprobeError as err:
        assert "\n" not in str(err)
        return
    assert 8 <= sidecar.input_size <= BOUNDS["image_size"].high and math.isfinite(sidecar.preprocess.scale)
