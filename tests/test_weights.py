"""Weights resolution: files, directories, the team directory, and the message when there are none."""

from __future__ import annotations

from pathlib import Path

import pytest

from clothprobe._util.files import file_sha256
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.backbones import get_backbone
from clothprobe.featurize.model.weights import resolve_weights

XCEPTION = get_backbone("xception")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("CLOTHPROBE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("CLOTHPROBE_OFFLINE", "1")


def fake_weights(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really weights")
    return path


def test_none_is_random_init() -> None:
    assert resolve_weights(XCEPTION, None).path is None
    assert resolve_weights(XCEPTION, "none").path is None


def test_explicit_file_and_directory(tmp_path: Path) -> None:
    f = fake_weights(tmp_path / "w" / "xception_notop.weights.h5")
    assert resolve_weights(XCEPTION, f).path == f
    got = resolve_weights(XCEPTION, tmp_path / "w")
    assert got.path == f and got.sha256 == file_sha256(f)


def test_env_dir_used_for_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = fake_weights(tmp_path / "team" / "xception_notop.weights.h5")
    monkeypatch.setenv("CLOTHPROBE_WEIGHTS_DIR", str(tmp_path / "team"))
    got = resolve_weights(XCEPTION, "imagenet")
    assert got.path == f and "CLOTHPROBE_WEIGHTS_DIR" in got.source


def test_config_file_dir(tmp_path: Path) -> None:
    f = fake_weights(tmp_path / "team" / XCEPTION.keras_file)  # Keras's own file name works too
    cfg = tmp_path / "config" / "clothprobe" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'weights_dir = "{tmp_path / "team"}"\n')
    assert resolve_weights(XCEPTION).path == f


def test_keras_cache_used(tmp_path: Path) -> None:
    f = fake_weights(tmp_path / "keras" / "models" / XCEPTION.keras_file)
    assert resolve_weights(XCEPTION).path == f


def test_unavailable_message_names_backbone_file_and_ways_out(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError) as info:
        resolve_weights(XCEPTION, "imagenet")
    msg = str(info.value)
    assert "xception" in msg and "xception_notop.weights.h5" in msg
    assert "--weights PATH" in msg and "CLOTHPROBE_WEIGHTS_DIR" in msg
    assert "CLOTHPROBE_OFFLINE" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="does not exist"):
        resolve_weights(XCEPTION, tmp_path / "nope.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClothprobeError, match="no weights file in directory"):
        resolve_weights(XCEPTION, tmp_path / "empty")


def test_download_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import clothprobe.featurize.model.weights as w

    monkeypatch.delenv("CLOTHPROBE_OFFLINE")

    def no_network(backbone):  # noqa: ANN001, ANN202 - what Keras raises without a network
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(w, "_download", no_network)
    with pytest.raises(ClothprobeError, match="download failed: URL fetch failure"):
        resolve_weights(XCEPTION)


def test_download_asks_keras_for_the_published_file_and_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The download path itself (only the network is replaced): Keras's URL, file name and published hash."""
    import keras

    monkeypatch.delenv("CLOTHPROBE_OFFLINE")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    asked = {}

    def fake_get_file(fname, origin, cache_subdir, file_hash):  # noqa: ANN001, ANN202 - keras.utils.get_file
        asked.update(fname=fname, origin=origin, file_hash=file_hash)
        path = tmp_path / fname
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    resolved = resolve_weights(XCEPTION)
    assert asked == {"fname": XCEPTION.keras_file, "origin": XCEPTION.weights_url, "file_hash": XCEPTION.keras_hash}
    assert resolved.path == tmp_path / XCEPTION.keras_file and "Keras download" in resolved.source
