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


def _png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_claiming(width, height):
    """A PNG whose header claims a size, with a tiny bogus body."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _png_short_header():
    """A PNG whose IHDR chunk stops after the size (Pillow: ValueError)."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">II", 48, 40))
            + _png_chunk(b"IEND", b""))


def _patched(fmt, at, value):
    """A small image saved in `fmt`, with the bytes at offset `at` replaced by `value`."""
    data = bytearray(_encoded(_noise(), fmt))
    data[at : at + len(value)] = value
    return bytes(data)


def _replaced(fmt, old, new):
    """A small image saved in `fmt`, with the first `old` in its bytes replaced by `new`."""
    return _encoded(_noise(), fmt).replace(old, new, 1)


def _jpeg2000_short_marker():
    """A JPEG 2000 codestream whose marker after SIZ claims a length below 2 (ValueError)."""
    data = _encoded(_noise(), "JPEG2000", no_jp2=True)
    after_siz = 4 + struct.unpack(">H", data[4:6])[0]  # SOC, then SIZ's marker and length
    return data[: after_siz + 2] + b"\x00\x01" + data[after_siz + 4 :]


def _tiff_rational_offsets():
    """A TIFF whose StripOffsets tag (273) is typed RATIONAL (Pillow: TypeError on load)."""
    data = bytearray(_encoded(_noise(), "TIFF"))
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:
            data[entry + 2 : entry + 4] = struct.pack("<H", 10)
    return bytes(data)


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


# Damaged files whose decoders raise ValueError, TypeError or NotImplementedError rather
# than OSError (issue 26), under the names of formats they are not: Pillow goes by content.
DAMAGED = [
    ("png-short-ihdr", "short.png", _png_short_header, "truncated"),
    ("ppm-bad-size", "scan.jpg", lambda: _replaced("PPM", b"48 40", b"48\xb540"), "ValueError"),
    ("im-bad-size", "scan.png", lambda: _replaced("IM", b"48*40", b"48*4\xa1"), "ValueError"),
    ("sgi-bad-channels", "photo.jpg", lambda: _patched("SGI", 10, struct.pack(">H", 5)),
     "ValueError"),
    ("jpeg2000-short-marker", "photo.png", _jpeg2000_short_marker, "ValueError"),
    ("dds-unknown-pixels", "texture.png", lambda: _patched("DDS", 80, struct.pack("<I", 0x93)),
     "unsupported format"),
    ("tiff-rational-offsets", "scan.jpg", _tiff_rational_offsets, "TypeError"),
]

CASES = [
    ("empty", "empty.jpg", lambda: b"", "empty"),
    ("truncated-jpeg", "truncated.jpg", lambda: _encoded(_noise(), "JPEG")[:400], "truncated"),
    ("html-named-jpg", "page.jpg", lambda: b"<!doctype html><html>404</html>", "not an image"),
    ("random-bytes", "noise.png", lambda: np.random.default_rng(1).bytes(2000), "not an image"),
    ("png-signature-only", "sig.png", lambda: b"\x89PNG\r\n\x1a\n", "not an image"),
    ("bomb-40000px", "scan.png", lambda: png_claiming(20_000, 20_000), "limit"),
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
    *DAMAGED,
]


def write_case(folder, case):
    name, filename, writer, _ = case
    path = folder / f"{name}-{filename}"
    path.write_bytes(writer())
    return path

