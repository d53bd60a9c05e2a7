"""Every decode case featurize promises, on images made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothprobe.featurize.images import BadImage, decode, is_ignored


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


@pytest.mark.parametrize("name, ignored", [(".DS_Store", True), ("._x.jpg", True), ("Thumbs.db", True), ("x.jpg", False)])
def test_hidden_files_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored
