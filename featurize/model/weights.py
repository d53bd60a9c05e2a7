"""Where a backbone's weights come from: resolved in one place, before any work starts.

Order for ``weights="imagenet"`` (the default): the team's offline directory (``CLOTHPROBE_WEIGHTS_DIR``,
or ``weights_dir`` in ``~/.config/clothprobe/config.toml``), then Keras's own cache
(``~/.keras/models``), then Keras's download (skipped when ``CLOTHPROBE_OFFLINE=1``). A path may name
a weights file or a directory holding one. ``weights=None`` gives a seeded random base, for tests.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from clothprobe._util.files import file_sha256, read_text
from clothprobe._util.settings import folder_setting
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.backbones import Backbone

ENV_DIR = "CLOTHPROBE_WEIGHTS_DIR"
ENV_OFFLINE = "CLOTHPROBE_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file ready to load (``path`` None means random initialisation) and its fingerprint."""

    path: Path | None
    sha256: str
    source: str


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "clothprobe" / "config.toml"


def weights_dir() -> tuple[Path, str] | None:
    """The team's offline weights directory and where that setting came from, if one is set; a setting that is
    not a folder path (``weights_dir = 5``, a table) is an error naming the file."""
    if os.environ.get(ENV_DIR):
        return folder_setting(os.environ[ENV_DIR], ENV_DIR), ENV_DIR
    cfg = config_file()
    if cfg.is_file():
        try:
            doc = tomllib.loads(read_text(cfg))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ClothprobeError(f"Cannot read {cfg}: {err}. Fix or remove that file.") from None
        if "weights_dir" in doc:
            return folder_setting(doc["weights_dir"], f"weights_dir in {cfg}"), str(cfg)
    return None


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def _in_dir(backbone: Backbone, directory: Path) -> Path | None:
    for name in (backbone.offline_file, backbone.keras_file):
        if (directory / name).is_file():
            return directory / name
    return None


def _resolved(path: Path, source: str) -> ResolvedWeights:
    return ResolvedWeights(path=path, sha256=file_sha256(path), source=source)


def _download(backbone: Backbone) -> Path:
    """Keras's own download and hash check into its cache; raises OSError-like errors when offline."""
    from keras.utils import get_file

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return Path(
            get_file(
                backbone.keras_file,
                backbone.weights_url,
                cache_subdir="models",
                file_hash=backbone.keras_hash,
            )
        )
    finally:
        socket.setdefaulttimeout(old)


def _unavailable(backbone: Backbone, tried: list[str], why: str) -> ClothprobeError:
    looked = "\n".join(f"  - {t}" for t in tried)
    return ClothprobeError(
        f"No ImageNet weights for backbone '{backbone.name}' ({why}). Looked for:\n{looked}\n"
        f"Two ways out:\n"
        f"  1. pass the file: --weights PATH/{backbone.offline_file} (or a directory holding it)\n"
        f"  2. point every command at an offline copy: export {ENV_DIR}=DIR "
        f"(or weights_dir = \"DIR\" in {config_file()}),\n"
        f"     where DIR holds {backbone.offline_file} or Keras's {backbone.keras_file}.\n"
        f"Nothing was computed."
    )


def resolve_weights(backbone: Backbone, weights: str | os.PathLike | None = "imagenet") -> ResolvedWeights:
    """Find the weights file for ``backbone`` or stop with a message that says how to provide it."""
    if weights is None or str(weights).lower() == "none":
        return ResolvedWeights(path=None, sha256="random-init", source="none (random initialisation)")
    if str(weights) != "imagenet":
        given = Path(weights).expanduser()
        if given.is_dir():
            found = _in_dir(backbone, given)
            if found is None:
                raise _unavailable(
                    backbone,
                    [str(given / backbone.offline_file), str(given / backbone.keras_file)],
                    f"no weights file in directory {given}",
                )
            return _resolved(found, str(found))
        if not given.is_file():
            raise _unavailable(backbone, [str(given)], f"file {given} does not exist")
        return _resolved(given, str(given))

    tried: list[str] = []
    team = weights_dir()
    if team is not None:
        directory, origin = team
        found = _in_dir(backbone, directory)
        if found is not None:
            return _resolved(found, f"{found} (from {origin})")
        tried.append(f"{directory / backbone.offline_file} (from {origin})")
    cached = keras_cache_dir() / backbone.keras_file
    if cached.is_file():
        return _resolved(cached, f"{cached} (Keras cache)")
    tried.append(f"{cached} (Keras cache)")
    tried.append(f"{backbone.weights_url} (Keras download)")
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise _unavailable(backbone, tried, f"downloads are off: {ENV_OFFLINE} is set")
    try:
        path = _download(backbone)
    except Exception as err:  # Keras wraps every network failure in a bare Exception
        raise _unavailable(backbone, tried, f"download failed: {str(err).splitlines()[0]}") from None
    return _resolved(path, f"{path} (Keras download)")
