"""What every classifier does with a pixel array, whatever runs its model: an empty batch,
and a batch it cannot use."""

import numpy as np
import pytest

from smallcnn.errors import UsageError

ENGINES = ("keras", "litert", "exported tflite")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained run exported to LiteRT (the default format), once for the module."""
    from smallcnn.inference.export import export

    root = tmp_path_factory.mktemp("exported")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLCNN_CACHE", str(root / "cache"))
        return export(trained[0], out=root / "model.tflite").path


def classifier(engine, trained, exported, monkeypatch):
    import smallcnn

    if engine == "exported tflite":
        return smallcnn.load(exported)
    classifier = smallcnn.load(trained[0])
    if engine == "keras":
        monkeypatch.setenv("SMALLCNN_ENGINE", "tf")
    else:  # the whole model in LiteRT (XNNPack), whatever the number of images
        classifier.litert_min_images = 0
    return classifier


@pytest.mark.parametrize("engine", ENGINES)
def test_an_empty_batch_has_no_probabilities_in_any_engine(engine, trained, exported,
                                                           monkeypatch):
    model = classifier(engine, trained, exported, monkeypatch)
    size = model.image_size
    for dtype in (np.uint8, np.float32):
        probabilities = model.probabilities(np.zeros((0, size, size, 3), dtype))
        assert probabilities.shape == (0, len(model.class_names))
        assert probabilities.dtype == np.float32
    assert model.predict(np.zeros((0, size, size, 3), np.uint8)) == []
    one = model.probabilities(np.zeros((1, size, size, 3), np.uint8))  # still runs after it
    assert one.shape == (1, len(model.class_names)) and abs(one.sum() - 1) < 1e-3


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_of_the_wrong_shape_or_type_is_refused_in_one_line(engine, trained, exported,
                                                                    monkeypatch):
    model = classifier(engine, trained, exported, monkeypatch)
    size = model.image_size
    wrong = {
        "shape=(2, 5, 5, 3)": np.zeros((2, 5, 5, 3), np.uint8),
        f"shape=({size}, {size}, 3)": np.zeros((size, size, 3), np.uint8),
        "dtype=<U1": np.full((1, size, size, 3), "a"),
        "dtype=object": np.full((1, size, size, 3), None, object),
        "dtype=complex128": np.zeros((1, size, size, 3), complex),
        "dtype=bool": np.zeros((1, size, size, 3), bool),
        "cannot make one array": [np.zeros((size, size, 3)), np.zeros((2, 2))],  # ragged
    }
    for received, images in wrong.items():
        with pytest.raises(UsageError) as refused:
            model.probabilities(images)
        message = str(refused.value)
        assert "\n" not in message and received in message, message
        assert f"(n, {size}, {size}, 3)" in message and "Received:" in message, message
        if isinstance(images, np.ndarray):
            with pytest.raises(UsageError, match="Received:"):  # predict's words are the same
                model.predict(images)
    with pytest.raises(UsageError, match="--batch-size must be at least 1"):
        model.probabilities(np.zeros((1, size, size, 3), np.uint8), batch_size=0)
