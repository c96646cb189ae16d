"""Reading image files into RGB pixel arrays, whatever shape the files are in.

Every command decodes images here, with Pillow, so training and prediction see the
same pixels: EXIF orientation applied, any mode converted to RGB (16-bit scaled,
transparency composited on white, CMYK converted), the first frame of an animation,
then a resize to a square of the model's size (or, for DeepDream and style transfer,
to a longer side, the aspect ratio kept). Whatever a damaged or hostile file makes
Pillow raise is an `UnreadableImage`, and a large image is shrunk a strip at a time
before it is converted, so that no full-size copy of it is made.
"""

import contextlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from smallcnn.errors import DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Threads that decode images (Pillow releases the GIL while it decodes and resizes): one
# per core and one more, so that decoding keeps up with a GPU on a many-core machine.
DECODE_WORKERS = min(32, (os.cpu_count() or 1) + 1)
# The most pixels an image may have, checked from its header before anything is decoded:
# by default Pillow's own decompression-bomb threshold (a 9,459 x 9,459 scan is at it).
PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS
# A resize first shrinks by a whole factor while the image stays at least this many
# times the target size (Pillow's `reducing_gap`), then resamples.
REDUCING_GAP = 3.0
# Pixels of the strips a large image is converted to RGB and shrunk in.
STRIP_PIXELS = 1 << 20
# Modes of 16- and 32-bit grey pixels, scaled to 8 bits.
DEEP_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Formats a file may be read as, whatever its name says: every one Pillow opens but EPS,
# whose plugin hands the file to Ghostscript, an interpreter, where it is installed.
Image.init()
READ_FORMATS = tuple(name for name in Image.OPEN if name != "EPS")


class UnreadableImage(DataError):
    """An image file that cannot be decoded; `reason` says why in a few words."""

    def __init__(self, path, reason):
        super().__init__(f"Cannot read image {str(path)!r}: {reason}.")
        self.path = str(path)
        self.reason = reason


def reason_for(error):
    """A few words on why a decoder failed, from the exception it raised."""
    message = first_line(error)
    if "truncated" in message.lower() or "broken data stream" in message:
        return "the file is truncated"
    if ("decoder" in message and "not available" in message) or isinstance(
            error, NotImplementedError):
        return f"unsupported format ({message})"
    if isinstance(error, OSError):
        return f"cannot decode it ({message})"
    return f"cannot decode it ({type(error).__name__}: {message})"


@contextlib.contextmanager
def decoding(path):
    """Turns what Pillow raises in the block into an `UnreadableImage` naming `path`.

    Pillow's decoders raise almost anything on a damaged or hostile file (ValueError,
    TypeError, NotImplementedError, struct.error, ...), and a file's name says nothing of
    its format, so each of them is a property of the file. MemoryError is not, nor are
    KeyboardInterrupt and SystemExit (not Exceptions).
    """
    try:
        yield
    except (UnreadableImage, MemoryError):
        raise
    except Exception as error:
        raise UnreadableImage(path, reason_for(error)) from error


def is_image_file(path):
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _open(path, data=None, max_pixels=PIXEL_LIMIT):
    """Opens an image file, or `data`, the bytes of one named `path` (an upload); refuses
    one whose header claims more than `max_pixels` pixels, before decoding anything."""
    path = Path(path)
    if data is None:
        try:
            size = path.stat().st_size
        except OSError as error:
            raise UnreadableImage(path, f"cannot open the file ({error.strerror})") from None
    else:
        size = len(data)
    if size == 0:
        raise UnreadableImage(path, "the file is empty")
    try:
        with warnings.catch_warnings():
            # The limit is checked below, in our words; Pillow's warning beyond its own
            # threshold would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path if data is None else io.BytesIO(data), formats=READ_FORMATS)
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:  # beyond twice Pillow's threshold: no size given
        limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
        raise UnreadableImage(path, f"larger than the limit of {limit:,} pixels") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UnreadableImage(
            path, f"{width}x{height} is larger than the limit of {max_pixels:,} pixels")
    return image


def _grey_top(image):
    """The value that becomes white in a 16- or 32-bit grey image: 65535 for 16-bit ones
    and for 32-bit ones with a value above 255, else 255; None for other modes."""
    if image.mode not in DEEP_GREY_MODES:
        return None
    if image.mode.startswith("I;16"):
        return 65535.0
    # getextrema makes no copy of the pixels, unlike numpy's max
    return 65535.0 if image.getextrema()[1] > 255 else 255.0


def _to_rgb(image, top):
    """Converts a loaded Pillow image of any mode to 8-bit RGB (`top`: see `_grey_top`)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in DEEP_GREY_MODES:
        values = np.asarray(image, dtype=np.float32)
        values = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(values, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resized_rgb(image, size, resample):
    """`_to_rgb(image).resize(size, resample, reducing_gap=REDUCING_GAP)`, the same pixels,
    but where that shrinks by a whole factor first, each strip of the image is converted
    then shrunk: no full-size RGB, RGBA or float copy (a 9400x9400 RGBA PNG made several)."""
    width, height = image.size
    factor = (int(width / size[0] / REDUCING_GAP) or 1, int(height / size[1] / REDUCING_GAP) or 1)
    top = _grey_top(image)
    if factor == (1, 1) or image.mode == "RGB":  # nothing to convert, or nothing to shrink
        rgb = _to_rgb(image, top)
        return rgb if rgb.size == size else rgb.resize(size, resample, reducing_gap=REDUCING_GAP)
    reduced = Image.new("RGB", (-(-width // factor[0]), -(-height // factor[1])))
    rows = factor[1] * max(1, STRIP_PIXELS // (width * factor[1]))
    for start in range(0, height, rows):
        strip = image.crop((0, start, width, min(height, start + rows)))
        reduced.paste(_to_rgb(strip, top).reduce(factor), (0, start // factor[1]))
    # Where Pillow's resize would resample its reduced copy from (a factor need not divide).
    box = (0, 0, width / factor[0], height / factor[1])
    return reduced.resize(size, resample, box=box)


def _read(path, box, resample, keep_aspect=False, data=None, max_pixels=PIXEL_LIMIT):
    """The pixels of an image file, or of its bytes `data`, as a read-only `(h, w, 3)`
    uint8 array: EXIF orientation applied, converted to RGB and resized to `box`, or,
    with `keep_aspect`, to fit in it. A JPEG is decoded at a reduced scale, no smaller
    than `box`."""
    with decoding(path):
        image = _open(path, data, max_pixels)
        with image:
            if image.format == "JPEG":
                image.draft("RGB", box)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale
            image.load()
            _orient(image)
            size = box
            if keep_aspect:
                scale = max(box) / max(image.size)
                size = tuple(max(1, round(side * scale)) for side in image.size)
            rgb = _resized_rgb(image, size, resample)
            # tobytes() then a view: one copy fewer than np.asarray (measured ~20% of a decode)
            return np.frombuffer(rgb.tobytes(), np.uint8).reshape(size[1], size[0], 3)


def _orient(image):
    """Turns a loaded image upright, in place, as its EXIF or XMP orientation says."""
    if not any("exif" in key.lower() or "xmp" in key.lower() for key in image.info):
        return  # an orientation can only come from EXIF or XMP metadata
    try:
        # In place: no copy of the pixels when they are upright already.
        ImageOps.exif_transpose(image, in_place=True)
    except MemoryError:
        raise
    except Exception:  # a damaged EXIF block (any error): keep the pixels as stored
        pass


def load_image(path, size, max_pixels=PIXEL_LIMIT):
    """Reads one image file as a `(size, size, 3)` uint8 RGB array.

    Raises:
        UnreadableImage: the file is empty, damaged, not an image, or larger than
            `max_pixels` pixels.
    """
    return _decode(path, size, max_pixels=max_pixels).copy()


def decode_image(data, name, size, max_pixels=PIXEL_LIMIT):
    """`load_image` for the bytes of an image file (an upload named `name`); the same
    `UnreadableImage` errors, in the same words."""
    return _decode(name, size, data, max_pixels).copy()


def _decode(path, size, data=None, max_pixels=PIXEL_LIMIT):
    """`load_image` as a read-only view of the decoded bytes (no copy)."""
    return _read(path, (size, size), Image.BILINEAR, data=data, max_pixels=max_pixels)


def load_picture(path, max_side, max_pixels=PIXEL_LIMIT):
    """Reads one image file as an `(h, w, 3)` uint8 RGB array, its aspect ratio kept and
    its longer side resized to `max_side` (for DeepDream and style transfer).

    Raises:
        UnreadableImage: as `load_image`.
    """
    return _read(path, (max_side, max_side), Image.BICUBIC, keep_aspect=True,
                 max_pixels=max_pixels).copy()


def load_images(paths, size, out=None, progress=None, max_pixels=PIXEL_LIMIT):
    """Decodes many images in parallel threads (Pillow releases the GIL while decoding).

    Args:
        paths: image file paths.
        size: the side of the square the images are resized to.
        out: an optional `(len(paths), size, size, 3)` uint8 array (e.g. a memmap) to fill.
        progress: an optional callable, called with the number of images done so far.
        max_pixels: the most pixels an image may have; larger ones are unreadable.

    Returns:
        `(images, failures)`: the array of decoded images, rows of unreadable files left
        at zero, and a list of `UnreadableImage` errors in path order.
    """
    paths = [str(p) for p in paths]
    if out is None:
        out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures = {}

    def work(index):
        try:
            out[index] = _decode(paths[index], size, max_pixels=max_pixels)
        except UnreadableImage as error:
            failures[index] = error

    workers = DECODE_WORKERS
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress is not None and (done % 32 == 0 or done == len(paths)):
                progress(done)
    return out, [failures[i] for i in sorted(failures)]


def load_readable(paths, size, progress=None, max_pixels=PIXEL_LIMIT):
    """Like `load_images`, without the rows of unreadable files.

    Returns:
        `(images, kept, failures)`: the decoded readable images, the indices into
        `paths` they come from (in order), and the `UnreadableImage` errors.
    """
    images, failures = load_images(paths, size, progress=progress, max_pixels=max_pixels)
    if not failures:
        return images, np.arange(len(images)), failures
    bad = {f.path for f in failures}
    kept = np.array([i for i, p in enumerate(map(str, paths)) if p not in bad], dtype=int)
    return images[kept], kept, failures
