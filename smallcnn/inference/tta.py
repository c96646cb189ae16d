"""Test-time augmentation: a model's probabilities averaged over views of each image.

The views, in order (`--tta-views N` takes the first N): the image itself, its mirror
image, the centre 87.5% enlarged back to the full size, and that crop's mirror image;
then the four corner crops of 87.5%. They are made from the decoded square image, so
every engine and every exported model takes them as it takes any image.
"""

import numpy as np

from smallcnn.errors import UsageError

CROP = 0.875
VIEWS = ("image", "mirror", "centre crop", "mirrored centre crop", "top-left crop",
         "top-right crop", "bottom-left crop", "bottom-right crop")
DEFAULT_VIEWS = 4  # what --tta uses without --tta-views


def check_views(count):
    if not 1 <= count <= len(VIEWS):
        raise UsageError(f"--tta-views must be between 1 and {len(VIEWS)}. Received: {count}")
    return count


def views_of(tta):
    """The number of views that `tta` asks for: False 1, True DEFAULT_VIEWS, or a number."""
    if tta is True:
        return DEFAULT_VIEWS
    return check_views(int(tta)) if tta else 1


def _crop(images, top, left, side):
    from PIL import Image

    size = images.shape[1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        crop = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
        out[i] = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out


def view(images, index):
    """View number `index` (see VIEWS) of a `(n, size, size, 3)` uint8 batch."""
    size = images.shape[1]
    side = max(1, int(round(size * CROP)))
    margin = size - side
    if index == 0:
        return images
    if index == 1:
        return images[:, :, ::-1]
    if index in (2, 3):
        centre = _crop(images, margin // 2, margin // 2, side)
        return centre if index == 2 else centre[:, :, ::-1]
    top, left = {4: (0, 0), 5: (0, margin), 6: (margin, 0), 7: (margin, margin)}[index]
    return _crop(images, top, left, side)


def averaged(run, images, count):
    """The mean of `run(view)` over the first `count` views of `images`; a run that looks
    at its close calls again (`second_look.SecondLook`) averages its own way, looking
    again at the average's."""
    if count > 1 and hasattr(run, "averaged"):
        return run.averaged(images, count)
    total = None
    for index in range(count):
        probabilities = np.asarray(run(np.ascontiguousarray(view(images, index))), np.float64)
        total = probabilities if total is None else total + probabilities
    return (total / count).astype(np.float32)
