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
