"""DeepDream and neural style transfer: they do what they promise, on tiny images."""

import numpy as np
import pytest
from conftest import assert_picture, invoke
from PIL import Image, ImageDraw

from smallcnn.model.bases import BASES


def photo(size=64, seed=0):
    """A smooth 'photo': a colour gradient with a few soft shapes on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = np.stack([200 * x + 30, 160 * y + 40, 120 + 80 * x * y], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        left, top = (int(v) for v in rng.integers(0, size * 2 // 3, 2))
        side = int(rng.integers(size // 6, size // 3))
        draw.ellipse([left, top, left + side, top + side],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(image)


def painting(size=64):
    """A 'painting': diagonal strokes in two saturated colours."""
    image = Image.new("RGB", (size, size), (250, 220, 40))
    draw = ImageDraw.Draw(image)
    for offset in range(-size, size, 8):
        draw.line([(offset, 0), (offset + size, size)], fill=(30, 60, 200), width=3)
    return np.asarray(image)


@pytest.fixture(scope="module")
def backbone():
    from smallcnn.visualize import open_backbone

    return open_backbone(base="mobilenet_v2")  # its ImageNet weights ship in the package


@pytest.mark.heavy  # DINOv2 takes one image size: refused (tests/test_dinov2.py)
@pytest.mark.parametrize("name", sorted(name for name, spec in BASES.items()
                                        if not spec.weights_folder))
def test_every_base_names_layers_it_has(name):
    """The registry's dream, style and content layers exist in the real base, with
    feature maps (checked as timm checks its registry's layer names)."""
    from smallcnn.visualize.common import feature_layer

    spec = BASES[name]
    base = spec.constructor((None, None, 3), None)
    names = [*spec.dream_layers, *spec.style_layers, spec.content_layer]
    assert spec.dream_layers and spec.style_layers and spec.content_layer
    for layer in names:
        assert len(feature_layer(base, layer).output.shape) == 4


def test_dream_raises_its_objective_at_every_octave_and_traces_once(backbone):
    from smallcnn.visualize.dream import DeepDream, DreamSettings

    dreamer = DeepDream(backbone)
    original = photo(96)
    dream = dreamer(original, DreamSettings(octaves=2, steps=10))
    assert dream.image.shape == original.shape and dream.image.dtype == np.uint8
    assert [frame.shape[:2] for frame in dream.octaves] == [(69, 69), (96, 96)]
    for trace in dream.objective:  # measured at a random shift each step: not quite monotonic
        assert trace[-1] > 1.2 * trace[0], trace
        assert np.corrcoef(np.arange(len(trace)), trace)[0, 1] > 0.8, trace
    assert dreamer.objective(dream.image[None].astype("float32")) > \
        1.5 * dreamer.objective(original[None].astype("float32"))
    assert dreamer.step.experimental_get_tracing_count() == 1  # two image sizes, one graph
    assert np.abs(dream.image.astype(int) - original).mean() > 5  # it visibly changed


def test_same_seed_same_dream(backbone):
    from smallcnn.visualize.dream import DeepDream, DreamSettings

    dreamer = DeepDream(backbone, ["block_3_expand_relu"])
    first, again, other = (dreamer(photo(), DreamSettings(octaves=1, steps=4, seed=seed)).image
                           for seed in (1, 1, 2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.heavy
def test_style_transfer_moves_the_gram_matrices_to_the_style(backbone):
    import tensorflow as tf

    from smallcnn.visualize.style import StyleSettings, StyleTransfer

    transfer = StyleTransfer(backbone)
    content, style = photo(64), painting(64)
    styled = transfer(content, style, StyleSettings(steps=40))
    total = np.array(styled.losses["total"])
    assert total[-1] < 0.5 * total[0] and (np.diff(total) < 0).mean() >= 0.8, total
    assert styled.losses["content"][0] == 0 and styled.final["content"] < 1.0

    def grams(pixels):
        return transfer.features(tf.constant(pixels[None], tf.float32))[1]

    ratios = [np.linalg.norm(after - target) / np.linalg.norm(before - target)
              for before, after, target in zip(grams(content), grams(styled.image), grams(style))]
    # every layer's Gram matrix closer to the style's, on average by more than 30%
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.7, dict(zip(styled.style_layers, ratios))
    assert transfer.step.experimental_get_tracing_count() == 1
    again = transfer(content, style, StyleSettings(steps=40))
    assert np.array_equal(styled.image, again.image)  # same inputs, same result


@pytest.mark.heavy
def test_swag_smoothing_moves_the_smoothed_statistics_to_the_style(backbone):
    """With --smoothing, the style loss is on the smoothed activations (`swag`) and still
    falls."""
    from smallcnn.visualize.style import StyleSettings, StyleTransfer

    transfer = StyleTransfer(backbone)
    content, style = photo(48), painting(48)
    plain = transfer(content, style, StyleSettings(steps=6))
    smoothed = transfer(content, style, StyleSettings(steps=6, smoothing=1.0))
    assert smoothed.losses["style"] != plain.losses["style"]
    assert smoothed.final["style"] < 0.8 * smoothed.losses["style"][0], smoothed.losses
    assert np.abs(smoothed.image.astype(int) - content).mean() > 1
    # after a smoothed run, 0 is the plain transfer again (the temperatures are an input)
    off = transfer(content, style, StyleSettings(steps=6, smoothing=0.0))
    assert np.array_equal(off.image, plain.image)
    assert transfer.step.experimental_get_tracing_count() == 1  # one graph, on or off


def test_a_layer_the_base_lacks_is_refused_with_the_valid_names(backbone):
    from smallcnn.errors import UsageError
    from smallcnn.visualize.dream import DeepDream
    from smallcnn.visualize.style import StyleTransfer

    for make in (lambda: DeepDream(backbone, ["block_99_relu"]),
                 lambda: StyleTransfer(backbone, "block_99_relu")):
        with pytest.raises(UsageError) as caught:
            make()
        message = str(caught.value)
        assert "no layer 'block_99_relu'" in message
        assert "block_6_expand_relu" in message and "out_relu" in message


@pytest.mark.heavy
def test_dream_and_style_commands_write_their_pictures(tmp_path):
    Image.fromarray(photo(80)).save(tmp_path / "photo.png")
    Image.fromarray(painting(80)).save(tmp_path / "painting.jpg")

    result = invoke("visualize", "dream", tmp_path / "photo.png", "--size", "80", "--octaves", "2",
                    "--steps", "3", "--frames", "--out", tmp_path / "out" / "dream.png")
    assert result.exit_code == 0, result.output
    for name in ("dream.png", "dream-octave1.png", "dream-octave2.png"):
        assert_picture(tmp_path / "out" / name, 50, 50)
    assert "objective (block_6_expand_relu, block_9_expand_relu)" in result.output

    result = invoke("visualize", "style", tmp_path / "photo.png", tmp_path / "painting.jpg",
                    "--size", "80", "--steps", "4")
    assert result.exit_code == 0, result.output
    written = Image.open(tmp_path / "photo-in-painting.png")
    assert written.size == (80, 80)
    assert "losses at the start -> the end: total" in result.output


def test_dream_and_style_refuse_bad_input_before_any_work(tmp_path):
    from smallcnn.errors import DataError, UsageError
    from smallcnn.data.images import load_image
    from smallcnn.visualize.style import SMOOTHING, WEIGHT

    Image.fromarray(photo(40)).save(tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")

    result = invoke("visualize", "dream", broken)
    with pytest.raises(DataError) as expected:
        load_image(broken, 32)
    assert result.exit_code == DataError.exit_code
    assert result.output.strip() == f"error: {expected.value}"  # predict's wording

    cases = [
        (["dream", tmp_path / "photo.png", "--out", tmp_path / "photo.png"], "is an input image"),
        (["style", tmp_path / "photo.png", tmp_path / "photo.png", "--out",
          tmp_path / "photo.png"], "is an input image"),
        (["dream", tmp_path / "photo.png", "--out", tmp_path / "dream.gif"], "must end with"),
        (["dream", tmp_path / "photo.png", "--octave-scale", "1"], "--octave-scale must be above 1"),
        (["style", tmp_path / "photo.png", tmp_path / "photo.png", "--tv-weight", "-1"],
         f"--tv-weight must be {WEIGHT.describe()}"),
        (["style", tmp_path / "photo.png", tmp_path / "photo.png", "--smoothing", "-1"],
         f"--smoothing must be {SMOOTHING.describe()}"),
        (["dream", tmp_path / "photo.png", "--model", tmp_path, "--base", "mobilenet_v2"],
         "not both"),
        (["dream", tmp_path / "photo.png", "--base", "vgg99"], "Unknown base: 'vgg99'"),
        (["dream", tmp_path / "photo.png", "--size", "40"], "first octave would be 20x20 pixels"),
        (["style", tmp_path / "photo.png", tmp_path / "photo.png", "--size", "20"],
         "content image is 20x20 pixels"),
    ]
    for args, expected_text in cases:
        result = invoke("visualize", *args)
        assert result.exit_code == UsageError.exit_code, (args, result.output)
        assert expected_text in result.output, (args, result.output)
    assert (tmp_path / "photo.png").read_bytes() == before
    assert not list(tmp_path.glob("*dream*")) and not list(tmp_path.glob("*-in-*"))


def test_huge_loss_weights_are_refused_in_one_line(tmp_path):
    from smallcnn.visualize.style import WEIGHT, WEIGHTS

    Image.fromarray(photo(64)).save(tmp_path / "photo.png")
    for name in WEIGHTS:
        flag = "--" + name.replace("_", "-")
        for value in (1e308, 1e300, WEIGHT.high * 2.0):
            result = invoke("visualize", "style", tmp_path / "photo.png", tmp_path / "photo.png",
                            "--steps", "1", "--size", "64", flag, repr(value))
            assert result.exit_code == 2, (flag, value, result.output)
            assert result.output == f"error: {flag} must be {WEIGHT.describe()}. Received: " \
                                    f"{value}\n"
    assert not list(tmp_path.glob("*-in-*"))


def test_a_style_transfer_whose_loss_overflows_gives_no_black_picture(backbone):
    """Whatever makes the loss non-finite (here a weight set past every check) is refused
    in one line, rather than returned as an all-black picture."""
    from smallcnn.errors import UsageError
    from smallcnn.visualize.style import StyleSettings, StyleTransfer

    settings = StyleSettings(steps=2)
    object.__setattr__(settings, "style_weight", 1e308)  # float32: inf, and the loss NaN
    with pytest.raises(UsageError, match="overflowed .* so its picture would be black"):
        StyleTransfer(backbone)(photo(64), painting(64), settings)



@pytest.mark.heavy
def test_the_python_api_returns_arrays_for_files_and_arrays(tmp_path):
    from smallcnn import visualize

    Image.fromarray(photo(60)).resize((90, 60)).save(tmp_path / "wide.png")
    dreamed = visualize.dream(tmp_path / "wide.png", octaves=1, steps=2, size=72)
    assert dreamed.shape == (48, 72, 3) and dreamed.dtype == np.uint8
    styled = visualize.style_transfer(photo(64), painting(40), steps=2, size=48)
    assert styled.shape == (48, 48, 3) and styled.dtype == np.uint8
