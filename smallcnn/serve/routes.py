"""The routes of `smallcnn serve`: the page and what the server says about itself
(`info_routes`: /, /health, /model, /metrics), and what it does with images
(`image_routes`: POST /predict, /gradcam). Each route gets the state the server shares, a
`Served`, from the `served` dependency."""

import asyncio
import contextlib
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from smallcnn import __version__
from smallcnn.serve.batcher import MicroBatcher, QueueFull
from smallcnn.serve.stats import Stats
from smallcnn.serve.uploads import Decoder, RequestError

PAGE = Path(__file__).with_name("page.html")
# The request body of POST /predict and /gradcam, as the API's docs (/docs) show it.
BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}

info_routes = APIRouter()
image_routes = APIRouter()


@dataclasses.dataclass
class Served:
    """What the routes share: the model, the settings, and the parts that work for them."""

    classifier: object
    settings: object  # a checked ServeSettings
    batcher: MicroBatcher
    decoder: Decoder
    stats: Stats
    ready: bool = False  # once the engine has run one batch
    # load_gradcam's future, from the first Grad-CAM on
    _gradcam_loaded: object = dataclasses.field(default=None, init=False, repr=False)

    async def gradcam_loaded(self):
        """Loads what Grad-CAM needs once, in a thread of its own: TensorFlow and the Keras
        model take tens of seconds on a first call, which predictions must not wait behind
        in the engine's thread."""
        if self._gradcam_loaded is None:
            loop = asyncio.get_running_loop()
            self._gradcam_loaded = loop.run_in_executor(None, load_gradcam, self.classifier)
        await asyncio.shield(self._gradcam_loaded)

    @classmethod
    def build(cls, classifier, run, settings):
        """The state of a server of `classifier`, whose batches `run` runs."""
        stats = Stats()
        batcher = MicroBatcher(run, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                               on_batch=stats.batch, max_tasks=settings.max_gradcam)
        return cls(classifier, settings, batcher, Decoder(settings, classifier.image_size), stats)

    @contextlib.asynccontextmanager
    async def running(self):
        """The app's lifespan: ready after a first batch; what was accepted is answered
        before the process exits."""
        size = self.classifier.image_size
        self.decoder.start()
        await self.batcher.start()
        await self.batcher.in_engine(self.batcher.run, np.zeros((1, size, size, 3), np.uint8))
        self.ready = True
        yield
        self.ready = False
        await self.batcher.stop()
        self.decoder.stop()


def served(request: Request) -> Served:
    """The server's shared state, for a route's `Depends`."""
    return request.app.state.served


def model_info(classifier):
    """What `GET /model` says: classes, base, image size, the run's metrics, versions."""
    config = classifier.config
    info = {"classes": classifier.class_names, "image_size": classifier.image_size,
            "base": config.get("base"), "weights": config.get("weights"),
            "engine": classifier.engine, "smallcnn_version": __version__,
            "run": str(classifier.run_dir) if classifier.run_dir else None,
            "file": getattr(classifier, "path", None), "metrics": None,
            "gradcam": gradcam_available(classifier)}
    if classifier.run_dir is not None:
        from smallcnn.model import runs

        metrics = Path(classifier.run_dir) / runs.METRICS_FILE
        with contextlib.suppress(OSError, ValueError):  # a run without metrics: none shown
            info["metrics"] = json.loads(metrics.read_text())
    return info


def gradcam_available(classifier):
    return classifier.run_dir is not None and importlib.util.find_spec("tensorflow") is not None


def load_gradcam(classifier):
    """Imports and loads what `gradcam_png` uses (TensorFlow, the run's Keras model)."""
    import smallcnn.runtime.plots  # noqa: F401  (matplotlib, for the overlay)
    import smallcnn.visualize  # noqa: F401

    return classifier.model


def gradcam_png(classifier, pixels, class_name):
    """The Grad-CAM overlay of one image as PNG bytes (TensorFlow, in the engine's thread)."""
    from PIL import Image

    from smallcnn.visualize import gradcam_overlays

    index = None if class_name is None else classifier.class_names.index(class_name)
    overlays, _, _ = gradcam_overlays(classifier, pixels[None], index)
    buffer = io.BytesIO()
    Image.fromarray(overlays[0]).save(buffer, format="PNG")
    return buffer.getvalue()


@info_routes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@info_routes.get("/health")
async def health(server: Served = Depends(served)):
    """Ready once the model is loaded and has run once."""
    if not server.ready:
        return JSONResponse({"status": "loading"}, 503)
    return {"status": "ready"}


@info_routes.get("/model")
async def model(server: Served = Depends(served)):
    """Classes, base, image size, the run's metrics, the smallcnn version."""
    return model_info(server.classifier)


@info_routes.get("/metrics", response_class=PlainTextResponse)
async def metrics(server: Served = Depends(served),
                  format: str = Query("prometheus", pattern="^(prometheus|json)$")):
    """Requests, latency quantiles, images/s: Prometheus text, or `?format=json`."""
    if format == "json":
        return JSONResponse(server.stats.to_dict())
    return PlainTextResponse(server.stats.prometheus(), media_type="text/plain; version=0.0.4")


@image_routes.post("/predict", openapi_extra=BODY_DOC)
async def predict(request: Request, server: Served = Depends(served),
                  top_k: int = Query(None, ge=1, description="Classes per image; default: "
                                                             "the server's --top-k."),
                  name: str = Query(None, description="The file name of a raw-body image.")):
    """Top-k classes of each image: the JSON of `smallcnn predict --json`."""
    files, images = await server.decoder.images(request, name, *server.settings.files_per_request)
    try:
        rows = await server.batcher.submit(images)
    except QueueFull as error:
        raise RequestError(503, f"The server is busy: {error}. Retry in a second.",
                           {"Retry-After": "1"}) from None
    top_k = server.settings.top_k if top_k is None else top_k
    return [server.classifier.prediction(path, row, top_k).to_dict()
            for (path, _), row in zip(files, rows)]


@image_routes.post("/gradcam", openapi_extra=BODY_DOC,
                   responses={200: {"content": {"image/png": {}}}})
async def gradcam(request: Request, server: Served = Depends(served),
                  class_name: str = Query(None, alias="class")):
    """The Grad-CAM overlay (PNG) of one image: where the model looked."""
    classifier = server.classifier
    if not gradcam_available(classifier):
        raise RequestError(501, "Grad-CAM needs a run folder's model and TensorFlow; this "
                                "server has " + ("no TensorFlow." if classifier.run_dir
                                                 else "an exported model."))
    if class_name is not None and class_name not in classifier.class_names:
        raise RequestError(422, f"class {class_name!r} is not one of the model's classes: "
                                f"{', '.join(classifier.class_names)}.")
    _, images = await server.decoder.images(request, None, 1, "one overlay per request")
    try:
        png = await server.batcher.run_task(gradcam_png, classifier, images[0], class_name,
                                            ready=server.gradcam_loaded)
    except QueueFull:
        raise RequestError(503, f"The server is busy: {server.settings.max_gradcam} Grad-CAM "
                                f"requests are waiting or running (--max-gradcam). Retry "
                                f"in a second.", {"Retry-After": "1"}) from None
    return Response(png, media_type="image/png")
