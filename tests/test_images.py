"""Odd but readable images convert correctly; unreadable ones raise with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from smallcnn.images import UnreadableImage, load_image, load_images


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg_resized_to_square(tmp_path):
    path = _save(tmp_path / "a.jpg", Image.new("RGB", (120, 80), (200, 30, 30)))
    pixels = load_image(path, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert abs(int(pixels[..., 0].mean()) - 200) < 5


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    pixels = load_image(_save(tmp_path / "a.png", image), 20)
    assert pixels.min() >= 250


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 10, 20))
    image.info["transparency"] = 0
    pixels = load_image(_save(tmp_path / "a.png", image, transparency=0), 20)
    assert tuple(pixels[5, 2]) == (255, 0, 0)
    assert tuple(pixels[5, 15]) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled(tmp_path):
    values = np.full((16, 16), 65535 // 2, dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    pixels = load_image(_save(tmp_path / "a.png", image), 16)
    assert 120 <= pixels.mean() <= 135


def test_cmyk_jpeg(tmp_path):
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    pixels = load_image(_save(tmp_path / "a.jpg", image), 16)
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree turn clockwise
    pixels = load_image(_save(tmp_path / "a.jpg", image, exif=exif, quality=95), 20)
    top, bottom = pixels[:10].mean(), pixels[10:].mean()
    assert top > 200 and bottom < 60  # the white half ends up on top


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 0, 255), (255, 0, 0))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pixels = load_image(path, 16)
    assert pixels[..., 2].mean() > 200 and pixels[..., 0].mean() < 60


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"<html><body>404 not found</body></html>", "not an image"),
        ("truncated", "truncated"),
    ],
    ids=["empty", "html-named-jpg", "truncated"],
)
def test_unreadable_files_raise_with_reason(tmp_path, content, reason):
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buffer, "JPEG"
        )
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason) as info:
        load_image(path, 16)
    assert info.value.path == str(path)


def test_load_images_reports_failures_and_keeps_order(tmp_path):
    good = [_save(tmp_path / f"{i}.png", Image.new("RGB", (8, 8), (i * 40, 0, 0))) for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    images, failures = load_images([good[0], bad, good[1], good[2]], 8)
    assert [f.path for f in failures] == [str(bad)]
    assert [int(images[i, 0, 0, 0]) for i in (0, 2, 3)] == [0, 40, 80]


def test_a_failure_that_is_not_the_files_is_not_called_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", out_of_memory)
    with pytest.raises(MemoryError):
        load_image(path, 8)
