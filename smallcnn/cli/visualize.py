"""`smallcnn visualize ...`: pictures of what a convnet learned."""

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from smallcnn.cli import _run, app
from smallcnn.cli.options import RunOption, shown_default
from smallcnn.visualize.common import PICTURE_BASE, VISUALIZE_DIR
from smallcnn.visualize.maps import CHANNELS, FILTER_STEPS, FILTERS, LAYERS
from smallcnn.visualize.dream import DreamSettings
from smallcnn.visualize.style import OFFLINE_BASE, VGG19, StyleSettings

VisualizeOut = Annotated[Optional[Path], typer.Option("--out", help="Folder for the pictures." + shown_default(f"RUN/{VISUALIZE_DIR}"), show_default=False)]
RunModel = Annotated[Optional[Path], typer.Option("--model", help="A run folder: use its base, with the run's (fine-tuned) weights.", show_default=False)]
PictureBase = Annotated[Optional[str], typer.Option("--base", help="A base of the registry, with its ImageNet weights." + shown_default(f"{PICTURE_BASE}, when no --model"), show_default=False)]
PictureWeights = Annotated[Optional[str], typer.Option("--weights", help="'imagenet' or a weights file of --base." + shown_default("imagenet"), show_default=False)]
StyleBase = Annotated[Optional[str], typer.Option("--base", help="A base of the registry, with its ImageNet weights." + shown_default(f"{VGG19} where Keras has its weights cached, else {OFFLINE_BASE}; when no --model"), show_default=False)]
DREAM, STYLE = DreamSettings(), StyleSettings()

visualize_app = typer.Typer(help="Pictures of what a convnet learned: Grad-CAM, activations, filters, "
                                 "DeepDream, style transfer.", no_args_is_help=True)
app.add_typer(visualize_app, name="visualize")


def _pictures(pictures):
    from smallcnn.cli.console import stdout

    for picture in pictures:
        extra = f"  {picture.label} {picture.probability:.1%}" if picture.label else ""
        stdout.print(f"{picture.path}{extra}", soft_wrap=True)
@visualize_app.command("gradcam")
def visualize_gradcam(
    images: Annotated[List[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    model: RunOption = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to explain." + shown_default("the predicted one"), show_default=False)] = None,
    out: VisualizeOut = None,
):
    """Grad-CAM heatmap over each image: which part made the decision (from the base's last conv layer)."""
    _pictures(_run("visualize.gradcam", [str(p) for p in images], model=model,
                   class_name=class_name, out=out))


@visualize_app.command("activations")
def visualize_activations(
    image: Annotated[Path, typer.Argument(help="An image file.", show_default=False)],
    model: RunOption = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Base layer to show (repeatable)." + shown_default(f"{LAYERS} conv layers from first to last"), show_default=False)] = None,
    channels: Annotated[int, typer.Option("--channels", help="Feature maps to show per layer.")] = CHANNELS,
    out: VisualizeOut = None,
):
    """A grid of the feature maps that chosen layers of the base compute for one image."""
    _pictures(_run("visualize.activations", str(image), model=model, layers=layer,
                   channels=channels, out=out))


@visualize_app.command("filters")
def visualize_filters(
    model: RunOption = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="A conv layer of the base.", show_default=False)] = None,
    count: Annotated[int, typer.Option("--filters", help="How many filters (the first N).")] = FILTERS,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps.")] = FILTER_STEPS,
    out: VisualizeOut = None,
):
    """The input patterns that maximise each filter of a conv layer (gradient ascent on the input)."""
    _pictures(_run("visualize.filters", model=model, layer=layer, count=count, steps=steps,
                   out=out))




@visualize_app.command("dream")
def visualize_dream(
    image: Annotated[Path, typer.Argument(help="An image file.", show_default=False)],
    model: RunModel = None,
    base: PictureBase = None,
    weights: PictureWeights = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Base layer whose activations to maximise (repeatable)." + shown_default("the base's dream layers in the registry"), show_default=False)] = None,
    octaves: Annotated[int, typer.Option(help="Scales to dream at, smallest first.")] = DREAM.octaves,
    octave_scale: Annotated[float, typer.Option(help="Size ratio between octaves.")] = DREAM.octave_scale,
    steps: Annotated[int, typer.Option(help="Gradient-ascent steps per octave.")] = DREAM.steps,
    step_size: Annotated[float, typer.Option(help="Mean change of a pixel per step, in half pixel ranges.")] = DREAM.step_size,
    size: Annotated[int, typer.Option(help="Longer side of the dream, in pixels.")] = DREAM.size,
    seed: Annotated[int, typer.Option(help="Seed of the random shifts.")] = DREAM.seed,
    frames: Annotated[bool, typer.Option("--frames", help="Also save the image at the end of each octave.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Picture to write (.png, .jpg, .webp)." + shown_default("IMAGE-dream.png here"), show_default=False)] = None,
):
    """DeepDream: gradient ascent on the image to maximise whole layers' activations, octave by octave."""
    from smallcnn.cli.console import stdout

    pictures, dream = _run("visualize.write_dream", str(image), out=out, frames=frames, model=model,
                           base=base, weights=weights, layers=layer, octaves=octaves,
                           octave_scale=octave_scale, steps=steps, step_size=step_size,
                           size=size, seed=seed)
    _pictures(pictures)
    stdout.print(f"objective ({', '.join(dream.layers)}): "
                 f"{dream.objective[0][0]:.3f} at the start, {dream.objective[-1][-1]:.3f} "
                 "at the last step", soft_wrap=True, highlight=False)


@visualize_app.command("style")
def visualize_style(
    content: Annotated[Path, typer.Argument(help="The image whose content to keep.", show_default=False)],
    style: Annotated[Path, typer.Argument(help="The image whose style to take (a painting).", show_default=False)],
    model: RunModel = None,
    base: StyleBase = None,
    weights: PictureWeights = None,
    content_layer: Annotated[Optional[str], typer.Option(help="Base layer that holds the content." + shown_default("the registry's, per base"), show_default=False)] = None,
    style_layer: Annotated[Optional[List[str]], typer.Option("--style-layer", help="Base layer whose Gram matrix is part of the style (repeatable)." + shown_default("the registry's, per base"), show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = STYLE.steps,
    size: Annotated[int, typer.Option(help="Longer side of the result (and of the style image), in pixels.")] = STYLE.size,
    content_weight: Annotated[float, typer.Option(help="Weight of the content loss (relative to the content image's features).")] = STYLE.content_weight,
    style_weight: Annotated[float, typer.Option(help="Weight of the style loss (relative to the style image's Gram matrices).")] = STYLE.style_weight,
    tv_weight: Annotated[float, typer.Option(help="Weight of the total variation (relative to the content image's): smoothness.")] = STYLE.tv_weight,
    learning_rate: Annotated[float, typer.Option(help="Adam's step size.")] = STYLE.learning_rate,
    smoothing: Annotated[float, typer.Option(help="SWAG's softmax of each layer's activations (Wang et al., 2021), its temperature relative to the layer's spread; 0: off.")] = STYLE.smoothing,
    out: Annotated[Optional[Path], typer.Option("--out", help="Picture to write (.png, .jpg, .webp)." + shown_default("CONTENT-in-STYLE.png here"), show_default=False)] = None,
):
    """Neural style transfer (Gatys et al.): CONTENT rendered in the style of STYLE."""
    from smallcnn.cli.console import stdout

    pictures, styled = _run("visualize.write_style", str(content), str(style), out=out,
                            model=model, base=base, weights=weights, content_layer=content_layer,
                            style_layers=style_layer, steps=steps, size=size,
                            content_weight=content_weight, style_weight=style_weight,
                            tv_weight=tv_weight, learning_rate=learning_rate, smoothing=smoothing)
    _pictures(pictures)
    start = {name: values[0] for name, values in styled.losses.items()}
    stdout.print("losses at the start -> the end: " + ", ".join(
        f"{name} {start[name]:.4g} -> {value:.4g}" for name, value in styled.final.items()),
        soft_wrap=True, highlight=False)
