"""Odd but readable images convert correctly; unreadable ones raise with a reason."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.corpus import png_claiming
from smallcnn.data.images import (PIXEL_LIMIT, STRIP_PIXELS, UnreadableImage, decode_image, load_image,
                             load_images)


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


def test_the_limit_named_is_the_limit_that_refuses():
    """Checked from the header (the PNG's body is a few bytes): an image at PIXEL_LIMIT is
    decoded (and found truncated), one a column wider is refused, in those words."""
    height = 9_459
    width = PIXEL_LIMIT // height
    with pytest.raises(UnreadableImage, match="truncated"):
        decode_image(png_claiming(width, height), "scan.png", 16)
    refused = f"{width + 1}x{height} is larger than the limit of {PIXEL_LIMIT:,} pixels"
    with pytest.raises(UnreadableImage, match=refused):
        decode_image(png_claiming(width + 1, height), "scan.png", 16)


def test_an_image_pillow_refuses_by_itself_names_the_limit_in_force():
    """Pillow refuses beyond twice its threshold before the header's size is known."""
    with pytest.raises(UnreadableImage, match=f"larger than the limit of {PIXEL_LIMIT:,} pixels"):
        decode_image(png_claiming(20_000, 20_000), "scan.png", 16)
    with pytest.raises(UnreadableImage, match="larger than the limit of 1,000 pixels"):
        decode_image(png_claiming(20_000, 20_000), "scan.png", 16, max_pixels=1_000)


def test_max_pixels_is_the_limit_in_force(tmp_path):
    path = _save(tmp_path / "a.png", Image.new("RGB", (100, 80)))
    assert load_image(path, 16, max_pixels=100 * 80).shape == (16, 16, 3)
    with pytest.raises(UnreadableImage,
                       match="100x80 is larger than the limit of 7,999 pixels") as info:
        load_image(path, 16, max_pixels=100 * 80 - 1)
    assert info.value.path == str(path)
    with pytest.raises(UnreadableImage, match="100x80 is larger than the limit of 5,000"):
        decode_image(path.read_bytes(), "upload", 16, max_pixels=5_000)


def _noisy(mode, width, height, seed=0):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    if mode == "P":
        image = Image.fromarray(rng.integers(0, 64, (height, width), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 255, 64 * 3, dtype=np.uint8).tobytes())
        return image
    image = Image.fromarray(rng.integers(0, 255, (height, width, 4), dtype=np.uint8), "RGBA")
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "CMYK"])
def test_a_large_image_is_shrunk_to_the_same_pixels_as_converted_whole(tmp_path, mode):
    """Large images are converted to RGB a strip at a time while they shrink: the pixels
    are those of converting the whole image, then resizing it (as smallcnn always did)."""
    width, height = 1_203, 2 * STRIP_PIXELS // 1_203 + 7  # three strips, the last one short
    image = _noisy(mode, width, height)
    path = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    image.save(path, **({"transparency": 5} if mode == "P" else {}))
    if mode == "I;16":
        whole = Image.fromarray(
            (np.asarray(image, np.float32) / 65535 * 255 + 0.5).astype(np.uint8)).convert("RGB")
    elif mode in ("RGBA", "LA", "P"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        rgba = Image.open(path).convert("RGBA")  # P: its transparency, as saved
        whole = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        whole = image.convert("RGB")
    expected = np.asarray(whole.resize((32, 32), Image.BILINEAR, reducing_gap=3.0))
    assert np.array_equal(load_image(path, 32), expected)


PEAK_MEMORY = Path("/proc/self/status")  # its VmHWM: this process's peak resident memory


@pytest.mark.skipif(not PEAK_MEMORY.exists(), reason="needs Linux's /proc/self/status")
def test_a_large_rgba_png_decodes_in_little_more_memory_than_its_pixels(tmp_path):
    """Converting a 9400x9400 RGBA PNG (343 KB) at full size took 1.7 GB (issue 26): several
    full-size RGBA copies. Now beyond the decoded pixels themselves, little more is used.
    Measured in a fresh process by VmHWM: ru_maxrss would keep the parent's peak across
    fork and exec, and Pillow's buffers are not seen by tracemalloc."""
    side, color, alpha = 4_000, (200, 30, 30), 128
    decoded = side * side * 4
    path = tmp_path / "large.png"
    Image.new("RGBA", (side, side), (*color, alpha)).save(path, compress_level=1)
    warm_up = _save(tmp_path / "small.png", Image.new("RGBA", (8, 8)))
    script = ("import sys\n"
              "from smallcnn.data.images import load_image\n"
              "def peak():  # in KiB\n"
              f"    status = open({str(PEAK_MEMORY)!r}).read().split('VmHWM:')[1]\n"
              "    return int(status.split()[0])\n"
              "load_image(sys.argv[2], 8)  # Pillow's plugins imported, its buffers made\n"
              "before = peak()\n"
              "pixels = load_image(sys.argv[1], 224)\n"
              "print((peak() - before) * 1024, pixels.mean())")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(warm_up)],
                          capture_output=True, text=True, timeout=120, check=True)
    growth, mean = done.stdout.split()
    growth = int(growth)
    # Beyond the pixels: strips of STRIP_PIXELS and Pillow's 16 MiB blocks, whatever the size.
    allowed = decoded + 32 * 2**20
    assert growth < allowed, f"{growth / 2**20:.0f} MiB, allowed {allowed / 2**20:.0f} MiB"
    on_white = np.mean([c * alpha / 255 + 255 * (1 - alpha / 255) for c in color])
    assert abs(float(mean) - on_white) < 1
