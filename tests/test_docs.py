"""The documentation works as written: every code block a user would type (```bash, ```python) in README.md,
CONTRIBUTING.md and docs/ runs, in order, page by page, in a folder of tiny photos with random-valued weights
files found through CLOTHPROBE_WEIGHTS_DIR (the commands run exactly as printed); a block that cannot run
in a test says so and why, right before it: `<!-- docs-test: skip (reason) -->`. docs/cli.md is the
commands' own help, regenerated and compared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_dataset, make_image

ROOT = Path(__file__).resolve().parents[1]  # the repository, or in CI the unpacked sdist
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")])
TYPED = ("bash", "python")  # what a user types; other blocks are file contents or sample output
SHOWN = ("text", "toml", "json", "csv")
IN_REPOSITORY = ("CONTRIBUTING.md",)  # a contributor types these in the repository, not in a photo folder
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>[^)]+)\) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```\s*$", re.DOTALL | re.MULTILINE)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason given, or None

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, m["lang"], m["code"],
                           skip["reason"].strip() if skip else None))
    return found


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in TYPED and b.skip is None]


def test_every_block_says_what_it_is() -> None:
    """A block is typed (bash, python) or shown (text, toml, json, csv); a skip marker gives a reason and
    stands before a typed block."""
    wrong = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang not in TYPED + SHOWN:
                wrong.append(f"{b.where}: a ```{b.lang} block; label it ```bash, ```python or, if nobody types it, "
                             f"```text")
            elif b.skip is not None and b.lang not in TYPED:
                wrong.append(f"{b.where}: a skip marker before a ```{b.lang} block, which is never run")
            elif b.skip is not None and len(b.skip) < 10:
                wrong.append(f"{b.where}: say why the block cannot run in a test, not {b.skip!r}")
    assert not wrong, "\n".join(wrong)


def test_the_runner_finds_blocks_and_skip_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```bash\ncli --help\n```\n\n<!-- docs-test: skip (needs a cluster) -->\n```bash\n"
                    "ray start --head\n```\n\n```text\nout\n```\n")
    found = [(b.lang, b.code, b.skip) for b in blocks(page)]
    assert found == [("bash", "cli --help\n", None), ("bash", "ray start --head\n", "needs a cluster"),
                     ("text", "out\n", None)]


def test_a_block_that_fails_names_its_place_and_the_way_out(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("```bash\ncli featurize --data no-such-folder\n```\n")
    (block,) = blocks(page)
    with pytest.raises(AssertionError, match=r"p\.md:1 failed \(bash block\)(?s:.*)docs-test: skip"):
        run_block(block, tmp_path, {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]})


def test_cli_reference_is_current() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_cli.py"), "--check"], check=False,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.stdout


# --- running the typed blocks ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Xception and VGG16 weights files with random values, where CLOTHPROBE_WEIGHTS_DIR points: the
    commands load them exactly as they would ImageNet's."""
    out = tmp_path_factory.mktemp("weights")
    code = ("import sys, keras; keras.utils.set_random_seed(0); out = sys.argv[1]\n"
            "keras.applications.Xception(weights=None, include_top=False).save_weights(out + '/xception_notop.weights.h5')\n"
            "keras.applications.VGG16(weights=None, include_top=False).save_weights(out + '/vgg16_notop.weights.h5')\n")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True, timeout=600)
    return out


def make_world(root: Path) -> Path:
    """The folder the examples run in: `photos/` (train, validation, test; three classes), `new-photos/`,
    `shirt.jpg` and `hat.png`."""
    # training photos enough for SMOTE and 5-fold CV; fewer to score (every page featurizes all of them)
    make_dataset(root / "photos", per_class={"hat": 6, "shirt": 5, "t-shirt": 8}, splits=("train",))
    make_dataset(root / "photos", per_class={"hat": 3, "shirt": 3, "t-shirt": 4}, splits=("validation", "test"), seed=1)
    for i in range(2):
        make_image(root / "new-photos" / f"{i}.jpg", seed=900 + i, size=(60, 80))
    make_image(root / "shirt.jpg", seed=990)
    make_image(root / "hat.png", seed=991, fmt="PNG")
    return root


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> str:
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    res = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (f"{block.where} failed ({block.lang} block):\n{block.code}\n--- stdout\n"
                                 f"{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}\nFix the page, or mark the "
                                 f"block `<!-- docs-test: skip (why) -->` if it cannot run in a test.")
    return res.stdout


# What some blocks must print, beyond succeeding: (a string the block holds, a check of its stdout and folder).
EXPECT = {
    "build_report(": lambda out, cwd: (out.splitlines()[1] == "reports/index.html"
                                       and (cwd / "reports" / "index.html").is_file()
                                       and out.splitlines()[0].startswith("logreg-weights-tta test accuracy ")),
    "load_features(": lambda out, cwd: "['hat', 'shirt', 't-shirt'] (19, 11544)" in out,
    "clf.score(": lambda out, cwd: "accuracy" in out,
}


@pytest.mark.slow  # each page featurizes and fits on tiny photos: tens of seconds
@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_runs_as_written(page: Path, tmp_path: Path, weights_dir: Path) -> None:
    cwd = ROOT if page.name in IN_REPOSITORY else make_world(tmp_path / "world")
    bin_dir = str(Path(sys.executable).parent)  # `cli` and `python` of this environment (CI: the wheel's venv)
    env = {**os.environ, "CLOTHPROBE_WEIGHTS_DIR": str(weights_dir), "CLOTHPROBE_OFFLINE": "1",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "120"}
    for block in runnable(page):
        out = run_block(block, cwd, env)
        for needle, check in EXPECT.items():
            if needle in block.code:
                assert check(out, cwd), f"{block.where} printed:\n{out}"


def test_readme_names_the_current_format_versions() -> None:
    from clothprobe.featurize.cache.schema import SCHEMA_VERSION
    from clothprobe.featurize.model.store import STORE_VERSION
    from clothprobe.runs.directory import FORMAT_VERSION

    text = (ROOT / "README.md").read_text()
    for what, version in (("schema", SCHEMA_VERSION), ("store", STORE_VERSION), ("format", FORMAT_VERSION)):
        assert f"{what} version {version} |" in text, f"README.md: the table of outputs should say {what} version {version}"
