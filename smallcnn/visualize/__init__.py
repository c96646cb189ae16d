"""Pictures of what a convnet learned.

    smallcnn visualize gradcam IMAGE... --model RUN      where the model looked (gradcam.py)
    smallcnn visualize activations IMAGE --model RUN     feature maps of an image (maps.py)
    smallcnn visualize filters --model RUN --layer NAME  what a layer's filters respond to
    smallcnn visualize dream IMAGE                       DeepDream (dream.py)
    smallcnn visualize style CONTENT STYLE               neural style transfer (style.py)

Each module computes arrays (usable from a notebook) and has a function that writes the
pictures for its command; `report.py` is the HTML report of a run. It may import
`inference` (a run's classifier, evaluation), `model`, `data` and `runtime`.
"""

from smallcnn.visualize.common import Picture, open_backbone
from smallcnn.visualize.dream import DeepDream, dream, write_dream
from smallcnn.visualize.gradcam import GradCam, gradcam, gradcam_overlays, upsample
from smallcnn.visualize.maps import (
           activations,
           default_layers,
           filter_patterns,
           filters,
)
from smallcnn.visualize.style import StyleTransfer, style_transfer, write_style

__all__ = ["DeepDream", "GradCam", "Picture", "activations", "default_layers", "dream",
           "filter_patterns", "filters", "gradcam", "gradcam_overlays", "open_backbone",
           "style_transfer", "StyleTransfer", "upsample", "write_dream", "write_style"]
