"""Reading image files into RGB pixel arrays, whatever shape the files are in.

Every command decodes images here, with Pillow, so training and prediction see the
same pixels: EXIF orientation applied, any mode converted to RGB (16-bit scaled,
transparency composited on white, CMYK converted), the first frame of an animation,
then a resize to a square of the model's size (or, for DeepDream and style transfer,
to a longer side, the aspect ratio kept). Whatever a damaged or hostile file makes
Pillow raise is an `UnreadableImage`.
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
# Pillow's own decompression-bomb threshold; a 20,000 x 20,000 scan is above it.
PIXEL_LIMIT = 178_956_970


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


def _open(path, data=None):
    """Opens an image file, or `data`, the bytes of one named `path` (an upload)."""
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
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path if data is None else io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(path, f"larger than the limit of {PIXEL_LIMIT:,} pixels") from None
    width, height = image.size
    if width * height > PIXEL_LIMIT:
        image.close()
        raise UnreadableImage(
            path, f"{width}x{height} is larger than the limit of {PIXEL_LIMIT:,} pixels"
        )
    return image


def _to_rgb(image):
    """Converts a loaded Pillow image of any mode to 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        values = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(values, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path, size):
    """Reads one image file as a `(size, size, 3)` uint8 RGB array.

    Raises:
        UnreadableImage: the file is empty, truncated, not an image or too large.
    """
    return _decode(path, size).copy()


def decode_image(data, name, size):
    """`load_image` for the bytes of an image file (an upload named `name`); the same
    `UnreadableImage` errors, in the same words."""
    return _decode(name, size, data).copy()


def _decode(path, size, data=None):
    """`load_image` as a read-only view of the decoded bytes (no copy)."""

    def square(image):
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
        # tobytes() then a view: one copy fewer than np.asarray (measured ~20% of a decode)
        return np.frombuffer(image.tobytes(), np.uint8).reshape(size, size, 3)

    return _read(path, (size, size), square, data)


def load_picture(path, max_side):
    """Reads one image file as an `(h, w, 3)` uint8 RGB array, its aspect ratio kept and
    its longer side resized to `max_side` (for DeepDream and style transfer).

    Raises:
        UnreadableImage: as `load_image`.
    """

    def fit(image):
        width, height = image.size
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8).copy()

    return _read(path, (max_side, max_side), fit)


def _read(path, draft, finish, data=None):
    """`finish(image)` of the decoded RGB Pillow image of a file, or of its bytes `data`
    (EXIF orientation applied), before the file is closed; a JPEG is decoded at a reduced
    scale no smaller than `draft`."""
    with decoding(path):
        image = _open(path, data)
        with image:
            if image.format == "JPEG":
                # Let libjpeg decode at a reduced scale, never below the target size.
                image.draft("RGB", draft)
            image.load()
            if any("exif" in key.lower() or "xmp" in key.lower() for key in image.info):
                try:  # an orientation can only come from EXIF or XMP metadata
                    image = ImageOps.exif_transpose(image)
                except MemoryError:
                    raise
                except Exception:  # a damaged EXIF block (any error): keep the pixels as stored
                    pass
            return finish(_to_rgb(image))


def load_images(paths, size, out=None, progress=None):
    """Decodes many images in parallel threads (Pillow releases the GIL while decoding).

    Args:
        paths: image file paths.
        size: the side of the square the images are resized to.
        out: an optional `(len(paths), size, size, 3)` uint8 array (e.g. a memmap) to fill.
        progress: an optional callable, called with the number of images done so far.

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
            out[index] = _decode(paths[index], size)
        except UnreadableImage as error:
            failures[index] = error

    workers = DECODE_WORKERS
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress is not None and (done % 32 == 0 or done == len(paths)):
                progress(done)
    return out, [failures[i] for i in sorted(failures)]


def load_readable(paths, size, progress=None):
    """Like `load_images`, without the rows of unreadable files.

    Returns:
        `(images, kept, failures)`: the decoded readable images, the indices into
        `paths` they come from (in order), and the `UnreadableImage` errors.
    """
    images, failures = load_images(paths, size, progress=progress)
    if not failures:
        return images, np.arange(len(images)), failures
    bad = {f.path for f in failures}
    kept = np.array([i for i, p in enumerate(map(str, paths)) if p not in bad], dtype=int)
    return images[kept], kept, failures
