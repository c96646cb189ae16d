"""A corpus of bad and odd image files, made by the tests themselves.

Each case: (name, file name, writer, expected), where `expected` is None for a file
that must load (converted to RGB) or the words its unreadable-reason must contain.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _noise(size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming(width, height):
    """A PNG whose header claims a size, with a tiny bogus body."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _exif_rotated():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6
    return _encoded(image, "JPEG", exif=exif)


def _palette_transparent():
    image = Image.new("P", (24, 24), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return _encoded(image, "PNG", transparency=0)


def _animated_gif():
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 0, 255), (255, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


CASES = [
    ("empty", "empty.jpg", lambda: b"", "empty"),
    ("truncated-jpeg", "truncated.jpg", lambda: _encoded(_noise(), "JPEG")[:400], "truncated"),
    ("html-named-jpg", "page.jpg", lambda: b"<!doctype html><html>404</html>", "not an image"),
    ("random-bytes", "noise.png", lambda: np.random.default_rng(1).bytes(2000), "not an image"),
    ("png-signature-only", "sig.png", lambda: b"\x89PNG\r\n\x1a\n", "not an image"),
    ("bomb-40000px", "scan.png", lambda: _png_claiming(20_000, 20_000), "limit"),
    ("png-named-jpg", "really-png.jpg", lambda: _encoded(_noise(), "PNG"), None),
    ("cmyk-jpeg", "cmyk.jpg", lambda: _encoded(_noise().convert("CMYK"), "JPEG"), None),
    ("grey-jpeg", "grey.JPG", lambda: _encoded(_noise().convert("L"), "JPEG"), None),
    ("16-bit-png", "deep.png",
     lambda: _encoded(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG"), None),
    ("palette-transparent", "palette.png", _palette_transparent, None),
    ("rgba-png", "alpha.png", lambda: _encoded(_noise().convert("RGBA"), "PNG"), None),
    ("grey-alpha-png", "la.png", lambda: _encoded(_noise().convert("LA"), "PNG"), None),
    ("one-bit-png", "bits.png", lambda: _encoded(_noise().convert("1"), "PNG"), None),
    ("animated-gif", "anim.gif", _animated_gif, None),
    ("exif-rotated", "phone.jpeg", _exif_rotated, None),
    ("bmp", "old.bmp", lambda: _encoded(_noise(), "BMP"), None),
    ("webp", "web.webp", lambda: _encoded(_noise(), "WEBP"), None),
    ("tiny-8px", "tiny.png", lambda: _encoded(_noise((8, 8)), "PNG"), None),
    ("tiff-named-png", "scan.png", lambda: _encoded(_noise(), "TIFF"), None),
]


def write_case(folder, case):
    name, filename, writer, _ = case
    path = folder / f"{name}-{filename}"
    path.write_bytes(writer())
    return path
