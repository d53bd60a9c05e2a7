"""Every decode case featurize promises, on images made here."""

from __future__ import annotations

import io
import os
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import python_output
from PIL import Image

from clothprobe.featurize import images
from clothprobe.featurize.images import BadImage, MemoryBudget, allow_pixels, decode, decode_file, is_ignored

PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS as Pillow ships it


def solid(mode: str, color, size=(8, 8)) -> Image.Image:
    return Image.new(mode, size, color)


@pytest.mark.parametrize(
    "name, image, fmt, expected",
    [
        ("rgb.jpg", solid("RGB", (200, 30, 30)), "JPEG", (200, 30, 30)),
        ("rgb.png", solid("RGB", (10, 200, 30)), "PNG", (10, 200, 30)),
        ("rgb.webp", solid("RGB", (10, 20, 200)), "WEBP", (10, 20, 200)),
        ("rgb.bmp", solid("RGB", (90, 80, 70)), "BMP", (90, 80, 70)),
        ("gray.png", solid("L", 128), "PNG", (128, 128, 128)),
        ("gray.jpg", solid("L", 60), "JPEG", (60, 60, 60)),
        ("cmyk.jpg", solid("CMYK", (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        ("transparent.png", solid("RGBA", (255, 0, 0, 0)), "PNG", (255, 255, 255)),
        ("opaque.png", solid("RGBA", (0, 0, 255, 255)), "PNG", (0, 0, 255)),
        ("gray_alpha.png", solid("LA", (0, 0)), "PNG", (255, 255, 255)),
        ("palette.png", solid("RGB", (0, 128, 0)).convert("P"), "PNG", (0, 128, 0)),
        ("palette.gif", solid("RGB", (255, 255, 0)).convert("P"), "GIF", (255, 255, 0)),
        ("bilevel.png", solid("1", 1), "PNG", (255, 255, 255)),
        ("tiff.tif", solid("RGB", (1, 2, 3)), "TIFF", (1, 2, 3)),
    ],
)
def test_decodes_formats_and_modes(tmp_path: Path, name, image, fmt, expected) -> None:
    path = tmp_path / name
    image.save(path, format=fmt)
    out = decode(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.reshape(-1, 3).mean(0) - np.array(expected)).max() <= 3, out[0, 0]


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    im.save(tmp_path / "t.png", transparency=0)
    assert (decode(tmp_path / "t.png", 8) == 255).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # half of 16-bit range
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = decode(tmp_path / "deep.png", 8)
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def gradient16(height: int, width: int) -> np.ndarray:
    """Every 16-bit value along a diagonal gradient: compresses well, and any wrong strip shows."""
    rows = np.arange(height, dtype=np.uint32)[:, None] * 7
    return ((rows + np.arange(width, dtype=np.uint32) * 3) % 65536).astype(np.uint16)


def test_sixteen_bit_strips_match_whole_image_scaling(tmp_path: Path) -> None:
    """Scaled strip by strip, a 16-bit image gives exactly what scaling it whole in float64 gives."""
    arr = gradient16(1100, 700)  # several strips, the last one short
    Image.fromarray(arr).save(tmp_path / "deep.png")
    whole = np.clip(arr / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(whole).convert("RGB").resize((64, 64), Image.BILINEAR))
    assert np.array_equal(decode(tmp_path / "deep.png", 64), expected)


def test_sixteen_bit_decode_makes_no_full_size_float_copy(tmp_path: Path) -> None:
    """Python-side memory of decoding a 16 MP 16-bit PNG stays under the 16-bit image's own size (2 bytes a
    pixel: the 8-bit result and one strip); a float64 copy alone would be 8 bytes a pixel."""
    height = width = 4000
    Image.fromarray(gradient16(height, width)).save(tmp_path / "big16.png")
    tracemalloc.start()
    try:
        out = decode(tmp_path / "big16.png", 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (32, 32, 3)
    assert peak < 2 * height * width, f"decode traced {peak / 1e6:.0f} MB for a {height * width / 1e6:.0f} MP image"


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [solid("RGB", (255, 0, 0)).convert("P"), solid("RGB", (0, 0, 255)).convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    out = decode(tmp_path / "anim.gif", 8)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # left half red
    arr[:, 10:] = (0, 0, 255)  # right half blue
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = decode(tmp_path / "rot.jpg", 20)
    assert out[10, 2, 2] > 200 and out[10, 2, 0] < 60  # left is now blue
    assert out[10, 17, 0] > 200  # right is now red


def test_exif_rotation_90_swaps_axes(tmp_path: Path) -> None:
    arr = np.zeros((10, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white, right half black: after a 90 degree turn the split is horizontal
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r90.jpg", exif=exif, quality=95)
    out = decode(tmp_path / "r90.jpg", 20).mean(axis=(1, 2))
    assert abs(out[:8].mean() - out[12:].mean()) > 150


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not a photo", "not an image"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        decode(tmp_path / "bad.jpg", 8)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="cannot decode"):
        decode(tmp_path / "cut.jpg", 8)


def test_pixel_limit_guards_against_bombs(tmp_path: Path) -> None:
    solid("RGB", (0, 0, 0), size=(100, 100)).save(tmp_path / "big.png")
    with pytest.raises(BadImage, match="above the limit"):
        decode(tmp_path / "big.png", 8, max_pixels=5_000)
    assert decode(tmp_path / "big.png", 8, max_pixels=10_000).shape == (8, 8, 3)


def test_an_upload_in_memory_decodes_as_its_file(tmp_path: Path) -> None:
    """``decode_file`` (an upload held as bytes) gives the pixels and the reasons ``decode`` gives the file."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    assert np.array_equal(decode_file(io.BytesIO(data), 16), decode(tmp_path / "a.jpg", 16))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for content, path in ((b"", tmp_path / "empty.jpg"), (b"not a photo", tmp_path / "text.jpg"),
                          (data[: len(data) // 2], tmp_path / "cut.jpg"), (data, tmp_path / "a.jpg")):
        path.write_bytes(content)
        with pytest.raises(BadImage) as from_file:
            decode(path, 16, max_pixels=3000)
        with pytest.raises(BadImage) as from_bytes:
            decode_file(io.BytesIO(content), 16, max_pixels=3000)
        assert str(from_bytes.value) == str(from_file.value)


@pytest.fixture(scope="module")
def hundred_megapixels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 10000 x 10000 image (1-bit PNG: 30 kB on disk), above Pillow's default warning limit."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (10_000, 10_000), 1).save(path)
    return path


def test_max_pixels_governs_above_pillows_own_limit(hundred_megapixels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 MP with --max-pixels 200M decodes: Pillow only warns there, and the library leaves its warning
    (and every process-wide setting) alone."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_LIMIT)
    with pytest.warns(Image.DecompressionBombWarning):
        filters = list(warnings.filters)
        out = decode(hundred_megapixels, 8, max_pixels=200_000_000)
        assert warnings.filters == filters
    assert (out == 255).all()
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(BadImage, match="10000x10000 pixels is above the limit of 50,000,000"):
        decode(hundred_megapixels, 8)


def test_above_pillows_hard_limit_the_reason_says_so(hundred_megapixels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above twice Pillow's limit Pillow refuses on open; the reason names it and the way to lift it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)  # restored after the test
    with pytest.raises(BadImage, match=r"above Pillow's own limit.*allow_pixels\(200000000\)"):
        decode(hundred_megapixels, 8, max_pixels=200_000_000)
    with pytest.raises(BadImage, match="above the limit of 15,000,000"):
        decode(hundred_megapixels, 8, max_pixels=15_000_000)
    allow_pixels(5)  # never lowers
    assert Image.MAX_IMAGE_PIXELS == 10_000_000
    allow_pixels(200_000_000)
    assert Image.MAX_IMAGE_PIXELS == 200_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # raised to --max-pixels, Pillow does not even warn
        assert decode(hundred_megapixels, 8, max_pixels=200_000_000).shape == (8, 8, 3)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_and_device_are_refused_without_reading(tmp_path: Path) -> None:
    """A FIFO would block the open forever and /dev/zero never ends: both are refused before reading,
    by the path check and again on the open descriptor (a FIFO put in place after a scan). In a
    subprocess with a timeout, so a regression fails instead of hanging."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    out = python_output(f"""
from pathlib import Path
from clothprobe.featurize import images
for name in ("pipe.jpg", "zero.jpg"):
    try:
        images.decode(Path({str(tmp_path)!r}) / name, 8)
    except images.BadImage as err:
        print(name, "->", err)
images.not_regular_reason = lambda path: None  # as if the FIFO appeared after the check
try:
    with images.open_regular(Path({str(tmp_path)!r}) / "pipe.jpg"):
        print("opened")
except images.BadImage as err:
    print("descriptor ->", err)
""", timeout=60)
    assert "pipe.jpg -> not a regular file: a named pipe (FIFO)" in out
    assert "zero.jpg -> not a regular file: a symbolic link to /dev/zero, which is a character device" in out
    assert "descriptor -> not a regular file: a named pipe (FIFO)" in out


def test_memory_budget_is_never_exceeded_and_a_large_request_runs_alone() -> None:
    budget = MemoryBudget(100)
    inside: list[tuple[int, int]] = []  # (bytes asked, bytes held by all at that moment)

    def work(nbytes: int) -> None:
        with budget.hold(nbytes):
            inside.append((nbytes, budget.in_use))
            time.sleep(0.01)

    # no subset of the small requests sums to 100, so 100 held means the large one ran alone
    threads = [threading.Thread(target=work, args=(n,)) for n in (30, 30, 250, 30, 20, 45)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a request waited forever"
    assert budget.peak <= 100 and budget.in_use == 0 and len(inside) == len(threads)
    assert (250, 100) in inside


def test_decode_waits_for_the_memory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decode holds its full-size pixel memory from the budget while it works."""
    budget = MemoryBudget(10**9)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    solid("RGB", (1, 2, 3), size=(100, 50)).save(tmp_path / "x.png")
    decode(tmp_path / "x.png", 8)
    assert budget.peak == 100 * 50 * images.PEAK_BYTES_PER_PIXEL and budget.in_use == 0


@pytest.mark.parametrize("name, ignored", [(".DS_Store", True), ("._x.jpg", True), ("Thumbs.db", True), ("x.jpg", False)])
def test_hidden_files_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored
