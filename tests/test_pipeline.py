import dataclasses

import numpy as np

from smallcnn.data.augment import PRESETS, build_augmenter, resolve_augmentation
from smallcnn.data.dataset import find_dataset
from smallcnn.data.pipeline import batches, decode_split
from smallcnn.progress import Reporter


class Notes(Reporter):
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def test_decoded_images_fall_back_to_disk_above_the_memory_budget(tiny_data):
    split = find_dataset(tiny_data).train
    in_memory = decode_split(split, 32, Reporter())
    notes = Notes()
    on_disk = decode_split(split, 32, notes, memory_budget=1000)
    assert isinstance(on_disk.images, np.memmap)
    assert not isinstance(in_memory.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(on_disk.images), in_memory.images)
    assert any("caching them on disk" in n for n in notes.notes)


def test_augmentation_changes_training_batches_only(tiny_data):
    split = decode_split(find_dataset(tiny_data).train, 32, Reporter())
    plain = np.concatenate([x.numpy() for x, _ in batches(split.images, split.labels, 8)])
    np.testing.assert_array_equal(plain, split.images.astype("float32"))  # val/test: untouched
    augmenter = build_augmenter(PRESETS["strong"], seed=1)
    augmented = np.concatenate([x.numpy() for x, _ in batches(split.images, split.labels, 8,
                                                              augmenter=augmenter)])
    assert augmented.shape == plain.shape
    assert augmented.min() >= 0 and augmented.max() <= 255
    assert np.abs(augmented - plain).mean() > 5


def test_horizontal_flip_alone_mirrors_images():
    image = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    image[:, :, :4] = 255  # white left half
    augmenter = build_augmenter(resolve_augmentation("none", flip="horizontal"), seed=0)
    seen = set()
    for index in range(12):
        out = np.asarray(augmenter(image.astype("float32"), index))
        left, right = out[0, :, :4].mean(), out[0, :, 4:].mean()
        seen.add("kept" if left > 200 and right < 50 else "mirrored" if right > 200 and left < 50
                 else "other")
    assert seen == {"kept", "mirrored"}


def test_augmented_batches_are_the_same_for_the_same_seed_in_parallel(tiny_data):
    split = decode_split(find_dataset(tiny_data).train, 32, Reporter())

    def first_batches(seed, count=9):  # three epochs of three batches, prepared in parallel
        stream = batches(split.images, split.labels, 8, shuffle=True, seed=seed, repeat=True,
                         augmenter=build_augmenter(PRESETS["strong"], seed=seed))
        return [x.numpy() for (x, _), _ in zip(stream, range(count))]

    one, again, other = first_batches(5), first_batches(5), first_batches(6)
    for a, b in zip(one, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(one, other))
    assert not np.array_equal(np.sort(one[0], axis=None), np.sort(one[3], axis=None))  # new draws each epoch


# Each numeric augmentation setting alone, at the strong preset's value, on a picture made
# to measure it: what it names varies within its range, draw to draw, and nothing else moves.
SIZE, DRAWS = 65, 32
CENTRE = (SIZE - 1) / 2


def augmented(name, picture):
    """DRAWS augmentations of `picture` (SIZE x SIZE, grey) with only setting `name` on,
    set as `train --NAME` sets it."""
    from smallcnn.train import Settings

    value = getattr(PRESETS["strong"], name)
    settings = Settings(augment="none", **{name: value}).augmentation()
    assert settings == dataclasses.replace(PRESETS["none"], **{name: value})
    images = np.repeat(np.asarray(picture, "float32")[None, :, :, None], 3, axis=3)
    out = np.asarray(build_augmenter(settings, seed=0)(np.repeat(images, DRAWS, axis=0), 0))
    assert out.shape == (DRAWS, SIZE, SIZE, 3)
    return value, out[..., 0]


def centroid(image):
    """(x, y) of the image's brightness, relative to the centre."""
    rows, columns = np.indices(image.shape)
    return (columns * image).sum() / image.sum() - CENTRE, (rows * image).sum() / image.sum() - CENTRE


def square(half, centre=(CENTRE, CENTRE)):
    picture = np.zeros((SIZE, SIZE))
    x, y = (int(c) for c in centre)
    picture[y - half : y + half + 1, x - half : x + half + 1] = 255
    return picture


def spread_within(values, top):
    """Every value within [-top, top], and the draws use most of that range."""
    values = np.asarray(values)
    assert np.abs(values).max() <= top * 1.05 + 0.05, (values, top)
    assert values.max() - values.min() >= top, (values, top)


def test_rotation_turns_the_picture_about_its_centre_by_at_most_rotation_degrees():
    degrees, out = augmented("rotation", square(2, (CENTRE, CENTRE - 16)))  # a dot above
    rows, columns = np.indices((SIZE, SIZE))
    disc = np.hypot(rows - CENTRE, columns - CENTRE) < CENTRE  # not the corners' reflections
    places = [centroid(image * disc) for image in out]
    spread_within([np.degrees(np.arctan2(x, -y)) for x, y in places], degrees)
    np.testing.assert_allclose([np.hypot(x, y) for x, y in places], 16, atol=0.5)


def test_shift_moves_the_picture_by_at_most_shift_of_its_width_and_height():
    fraction, out = augmented("shift", square(2))
    places = np.array([centroid(image) for image in out])
    spread_within(places[:, 0], fraction * SIZE)
    spread_within(places[:, 1], fraction * SIZE)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), square(2).sum(), rtol=0.02)  # same dot


def test_shear_slants_a_vertical_bar_by_at_most_shear():
    picture = np.zeros((SIZE, SIZE))
    picture[:, int(CENTRE) - 1 : int(CENTRE) + 2] = 255
    factor, out = augmented("shear", picture)
    rows = np.arange(8, SIZE - 8)  # away from the reflected edges
    slopes = [np.polyfit(rows, [centroid(image[[row]])[0] for row in rows], 1)[0] for image in out]
    spread_within(slopes, factor)


def test_zoom_scales_the_picture_by_at_most_zoom():
    zoom, out = augmented("zoom", square(10))
    scales = np.sqrt(square(10).sum() / out.sum(axis=(1, 2)))  # scale > 1: zoomed out
    spread_within(scales - 1, zoom)
    np.testing.assert_allclose([centroid(image) for image in out], 0, atol=0.2)  # about the centre


def test_brightness_adds_at_most_brightness_of_the_range_to_every_pixel():
    fraction, out = augmented("brightness", np.full((SIZE, SIZE), 128.0))
    assert out.std(axis=(1, 2)).max() < 1e-3  # the same change everywhere in an image
    spread_within(out.mean(axis=(1, 2)) - 128, fraction * 255)


def test_contrast_scales_differences_from_the_mean_by_at_most_contrast():
    picture = np.full((SIZE, SIZE), 96.0)
    picture[:, SIZE // 2 :] = 160
    contrast, out = augmented("contrast", picture)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), picture.mean(), atol=0.01)  # the mean kept
    factors = (out[:, 0, -1] - out[:, 0, 0]) / (160 - 96)
    spread_within(factors - 1, contrast)
