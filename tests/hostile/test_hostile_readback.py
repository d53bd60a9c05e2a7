"""Issue 30, class 4: every value read back is validated, by the module that owns it, in one line naming the file:
an open-set threshold or k, a manifest's class list against its model, the numbers of a run's records, a LightGBM
model's trees (whose hash a tamperer recomputed), the weights folder of config.toml and the model store's home."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import make_cache
from test_hostile_runs import write_run

from clothprobe.classifiers import fit
from clothprobe.classifiers.lgbmtext import _reaches_each_node_once
from clothprobe.classifiers.openset import DEFAULT_K, check_entry_values
from clothprobe.errors import ClothprobeError
from clothprobe.runs import directory as rundir

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=6),
                         st.sampled_from(["0.5", "NaN", "Infinity", "1e9"]))


def _rehash(run_dir: Path) -> None:
    """The manifest's hashes made to match the files again, as whoever can write the folder would."""
    doc = json.loads((run_dir / "manifest.json").read_text())
    doc["sha256"] = {name: rundir.file_sha256(run_dir / name) for name in doc["sha256"]}
    (run_dir / "manifest.json").write_text(json.dumps(doc))


def _edit(run_dir: Path, change) -> None:  # noqa: ANN001 - called with the manifest's dict
    doc = json.loads((run_dir / "manifest.json").read_text())
    change(doc)
    (run_dir / "manifest.json").write_text(json.dumps(doc))


# --- the open-set threshold and k -------------------------------------------------------------------------


@given(threshold=json_scalars, k=json_scalars, bank=st.integers(1, 50))
def test_an_openset_entry_holds_a_finite_threshold_and_a_k_within_the_bank(threshold: object, k: object,
                                                                          bank: int) -> None:
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
    whole = isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= max(bank, DEFAULT_K)
    if number and whole:
        assert check_entry_values({"threshold": threshold, "k": k}, bank) == (float(threshold), k)
    else:
        with pytest.raises(ClothprobeError, match="the open-set (threshold must be a finite number|k must be a whole)"):
            check_entry_values({"threshold": threshold, "k": k}, bank)


@pytest.fixture(scope="module")
def unknown_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_reject import unknown_cache

    root = tmp_path_factory.mktemp("openset")
    make_cache(root / "features")
    (result,) = fit("clothes", features_dir=root / "features", models_dir=root / "models",
                    unknown=unknown_cache(root / "features"))
    return result.run_dir


@pytest.mark.parametrize(("key", "value"), [("threshold", "0.5"), ("threshold", float("nan")),
                                            ("threshold", float("inf")), ("k", 0), ("k", -3), ("k", 10**9),
                                            ("k", 2.5), ("components", ["msp", "evil"])])
def test_a_tampered_openset_value_is_refused_in_one_line(unknown_run: Path, tmp_path: Path, key: str,
                                                        value: object) -> None:
    import shutil

    from clothprobe.runs.predicting import Predictor

    run = tmp_path / "run"
    shutil.copytree(unknown_run, run)
    _edit(run, lambda doc: doc["openset"].__setitem__(key, value))
    with pytest.raises(ClothprobeError, match=r"manifest.json") as refused:
        Predictor(run)
    assert "\n" not in str(refused.value)
    if isinstance(value, float) and not math.isfinite(value):  # no number of a manifest may be: all of it refused
        assert "every number must be finite" in str(refused.value)
    else:  # the open-set entry is: the run without its reject option is still usable
        assert "refusing the reject option" in str(refused.value)
        Predictor(run, unknown=False)


# --- a manifest's classes against its model ------------------------------------------------------------------


@pytest.mark.parametrize("clf", ["logreg", "lgbm"])  # checked before the model's format matters
def test_a_manifest_whose_classes_disagree_with_its_model_is_refused(tmp_path: Path, clf: str) -> None:
    from clothprobe.classifiers.modelio import load_model

    make_cache(tmp_path / "features")
    (result,) = fit("clothes", clf=clf, balance="none", features_dir=tmp_path / "features",
                    models_dir=tmp_path / "models")
    load_model(result.run_dir)
    _edit(result.run_dir, lambda doc: doc.__setitem__("classes", doc["classes"][:2]))  # one class fewer
    with pytest.raises(ClothprobeError, match=r"the model's classes \[0, 1, 2\] are not the 2 classes the manifest "
                                              r"names \(dress, hat\)"):
        load_model(result.run_dir)
    _edit(result.run_dir, lambda doc: doc.update(classes=["dress", "hat", "t-shirt", "scarf"]))
    with pytest.raises(ClothprobeError, match="are not the 4 classes the manifest names"):
        load_model(result.run_dir)


def test_a_keras_head_whose_outputs_are_not_the_classes_is_refused(tmp_path: Path) -> None:
    import keras

    from clothprobe.classifiers.modelio import load_model

    def five_outputs(directory: Path) -> dict:  # the manifest (test_rundir.make) names two classes
        inputs = keras.Input((16,))
        keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(inputs)).save(directory / "model.keras")
        return {"format": "keras", "classes": [0, 1], "file": "model.keras"}

    run = write_run(tmp_path / "r", five_outputs)
    with pytest.raises(ClothprobeError, match=r"model.keras outputs \[\(None, 5\)\], not one probability per class "
                                              r"of this run's 2"):
        load_model(run)


# --- the numbers of a run's records ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two-runs")
    make_cache(root / "features")
    for clf in ("logreg", "lgbm"):
        fit("clothes", clf=clf, balance="none", features_dir=root / "features", models_dir=root / "models")
    return root / "models"


@pytest.mark.parametrize(("path", "value"), [
    (("fit_seconds",), float("nan")), (("fit_seconds",), 1e308), (("featurize_seconds",), float("inf")),
    (("train_counts", "hat"), -5), (("test", "n"), -1), (("test", "confusion_matrix", 0, 0), -2),
    (("test", "ci", "accuracy", 0), float("nan")), (("test", "per_class", "hat", "f1"), float("nan")),
    (("selection_n", ), 10**400), (("test", "ece"), 7.0), (("openset",), {"threshold": float("nan")}),
    (("taps",), {"candidates": [{"accuracy": 1e308}]}),
])
def test_report_lists_a_run_with_impossible_numbers_as_skipped(two_runs: Path, tmp_path: Path, path: tuple,
                                                               value: object) -> None:
    import shutil

    from clothprobe.report import build_report

    shutil.copytree(two_runs, tmp_path / "models")
    metrics = tmp_path / "models" / "clothes" / "xception" / "lgbm-none" / "metrics.json"
    doc = json.loads(metrics.read_text())
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    metrics.write_text(json.dumps(doc))
    report = build_report(tmp_path / "models", tmp_path / "reports")
    ((folder, why),) = report.skipped
    assert Path(folder).name == "lgbm-none" and "metrics.json" in why and "\n" not in why
    assert [r.id for s in report.sections for r in s.runs] == ["xception/logreg-none"]


@given(value=st.one_of(st.integers(-2**60, 2**60), st.floats()), hint=st.sampled_from([int, float]))
def test_a_number_read_back_is_finite_and_within_0_and_2_53(value: float, hint: type) -> None:
    inside = (isinstance(value, int) or hint is float) and 0 <= value <= 2**53 and math.isfinite(value)
    if inside:
        assert rundir._check(value, hint, "x") == value
    else:
        with pytest.raises(ValueError, match="^x should be"):
            rundir._check(value, hint, "x")


# --- LightGBM's trees ---------------------------------------------------------------------------------------


def _lgbm(directory: Path) -> dict:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)  # the two classes of test_rundir.make's manifest
    model = lightgbm.LGBMClassifier(n_estimators=3, num_leaves=4, min_child_samples=5, verbose=-1).fit(X, y)
    model.booster_.save_model(directory / "model.lgbm.txt")
    return {"format": "lightgbm", "classes": [0, 1], "file": "model.lgbm.txt"}


def _retree(text: str, key: str, value: str, tree: int = 0) -> str:
    """``key`` of tree ``tree`` set to ``value``, ``tree_sizes`` made to match again (LightGBM reads the file)."""
    head, *trees = re.split(r"(?=^Tree=)", text, flags=re.M)
    trees[tree] = re.sub(rf"^{key}=.*$", f"{key}={value}", trees[tree], count=1, flags=re.M)
    sizes = [len(t) for t in trees[:-1]] + [trees[-1].index("end of trees")]
    return re.sub(r"^tree_sizes=.*$", "tree_sizes=" + " ".join(map(str, sizes)), head, flags=re.M) + "".join(trees)


PREDICT_TAMPERED = textwrap.dedent("""
    import sys
    import numpy as np
    from clothprobe.classifiers.modelio import load_model
    from clothprobe.errors import ClothprobeError
    try:
        model = load_model(sys.argv[1])
    except ClothprobeError as err:
        print("refused:", err)
        raise SystemExit(0)
    p = model.predict_proba(np.random.default_rng(1).normal(size=(2000, 5)) * 3)
    print("predicted", bool(np.isfinite(p).all()), float(p.min()), float(p.max()))
""")


@pytest.mark.parametrize(("key", "value", "harm"), [
    ("split_feature", "2 1 999999", "a segfault once a row reaches that split"),
    ("left_child", "1 7 -1", "reads past the nodes: hangs"),
    ("left_child", "0 2 -1", "a loop back to the root: predict never ends"),
    ("right_child", "-2 -3 -40", "a leaf past the last: a silently wrong probability"),
    ("leaf_value", "nan 1 2 3", "a NaN probability"),
    ("decision_type", "1 2 2", "a categorical split without categories"),
])
def test_a_lightgbm_tree_that_leads_out_of_range_is_refused_before_use(tmp_path: Path, key: str, value: str,
                                                                        harm: str) -> None:
    run = write_run(tmp_path / "r", _lgbm)
    model = run / "model.lgbm.txt"
    text = model.read_text()
    assert re.search(rf"^{key}=", text.split("Tree=1")[0], flags=re.M), "the fitted tree has this field"
    if key in ("left_child", "right_child", "split_feature", "decision_type"):
        assert "num_leaves=4" in text.split("Tree=1")[0]
    model.write_text(_retree(text, key, value))
    _rehash(run)
    try:
        done = subprocess.run([sys.executable, "-c", PREDICT_TAMPERED, str(run)], capture_output=True, text=True,
                              timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"predict did not end ({harm})")
    assert done.returncode == 0, f"{harm}: exit {done.returncode} {done.stderr[-300:]}"
    assert done.stdout.startswith("refused:") and "is not a readable LightGBM model (tree 0:" in done.stdout, \
        f"{harm}: {done.stdout}"


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """A binary tree in LightGBM's arrays: internal nodes 0..n-2 (0 the root), leaves as ~index, in any order."""
    leaves = draw(st.integers(2, 12))
    internal = list(range(1, leaves - 1))
    order = draw(st.permutations(internal)) if internal else []
    left, right = [0] * (leaves - 1), [0] * (leaves - 1)
    slots = [(0, "l"), (0, "r")]
    for node in order:  # each internal node hangs from a free slot
        parent, side = slots.pop(draw(st.integers(0, len(slots) - 1)))
        (left if side == "l" else right)[parent] = node
        slots += [(node, "l"), (node, "r")]
    for leaf, (parent, side) in zip(draw(st.permutations(range(leaves))), slots):
        (left if side == "l" else right)[parent] = ~leaf
    return left, right, leaves


@settings(max_examples=200)
@given(tree=trees(), data=st.data())
def test_child_arrays_pass_exactly_when_they_make_a_tree(tree: tuple[list[int], list[int], int],
                                                         data: st.DataObject) -> None:
    left, right, leaves = tree
    assert _reaches_each_node_once(left, right, leaves)
    # any one child changed breaks it: the child it pointed at is then reached by nothing
    side = data.draw(st.sampled_from([left, right]))
    slot = data.draw(st.integers(0, len(side) - 1))
    new = data.draw(st.integers(-3 * leaves, 3 * leaves).filter(lambda v: v != side[slot]))
    side[slot] = new
    assert not _reaches_each_node_once(left, right, leaves)


# --- settings: config.toml's weights_dir, the store's home ----------------------------------------------------


@pytest.mark.parametrize(("text", "said"), [
    ("weights_dir = 5", "weights_dir in .*config.toml must be a folder path .*got 5"),
    ("[weights_dir]\nx = 1", "weights_dir in .*config.toml must be a folder path .*got \\{'x': 1\\}"),
    ('weights_dir = "~nosuchuser-clothprobe/w"', "whose ~ cannot be expanded"),
    ("weights_dir = ", "Cannot read .*config.toml: Invalid value"),
    ("\xff", "Cannot read .*config.toml"),
])
def test_a_malformed_config_is_one_line(tmp_path: Path, text: str, said: str) -> None:
    from conftest import cli

    (tmp_path / "cfg" / "clothprobe").mkdir(parents=True)
    (tmp_path / "cfg" / "clothprobe" / "config.toml").write_bytes(text.encode("latin-1"))
    done = cli("featurize", "--data", str(tmp_path), "--backbone", "vgg16", cwd=tmp_path, home=tmp_path / "home",
               env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, unset=("CLOTHPROBE_WEIGHTS_DIR",))
    assert done.returncode == 2, done.stderr
    assert re.search(said, done.stderr) and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("home", ["/dev/null", "file", "file/below", "~nosuchuser-clothprobe/x"])
def test_a_store_home_that_is_not_a_folder_is_one_line(tmp_path: Path, home: str) -> None:
    from conftest import cli

    (tmp_path / "file").write_text("mine")
    home = home if home.startswith(("/", "~")) else str(tmp_path / home)
    done = cli("cache", "list", cwd=tmp_path, env={"CLOTHPROBE_HOME": home})
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert re.search(r"(is .*(a file|not a folder)|cannot be expanded)", done.stderr), done.stderr
    assert (tmp_path / "file").read_text() == "mine"
