"""The HTTP API and the web page, as a FastAPI app around one loaded model."""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import json
import logging
import numbers
import os
import secrets
import time
from pathlib import Path

import numpy as np

from smallcnn import __version__
from smallcnn.data.images import PIXEL_LIMIT, UnreadableImage, decode_image
from smallcnn.errors import DataError, UsageError, first_line
from smallcnn.runtime.ranges import Range

PAGE = Path(__file__).with_name("page.html")
NOT_AN_IMAGE = "not an image"  # the start of `UnreadableImage.reason` for a foreign file
UPLOAD_NAME = "upload"  # the `path` of an image sent as a raw body without ?name=
log = logging.getLogger(__name__)


# Images decoded at once, one per core: decoding is the server's largest use of memory.
DECODE_SLOTS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)
INTERNAL_ERROR = "internal error: the server logged it; please report it."
# The request body of POST /predict and /gradcam, as the API's docs (/docs) show it.
BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # images the engine runs at once
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_queue: int = 256  # images waiting at once; beyond, 503 with Retry-After
    max_files: int = 64  # images in one request (or max_queue); beyond, 413 before decoding
    max_pixels: int = 40_000_000  # pixels of one image, from its header; beyond, 422
    max_gradcam: int = 4  # Grad-CAM requests waiting or running; beyond, 503 with Retry-After
    max_upload_mb: float = 20.0  # one request's body; beyond, 413
    top_k: int = 3
    cors: str = None  # an origin allowed to call the API from a browser; None: no CORS headers
    token: str = None  # a bearer token the API requires; None: no authentication

    # The range of each numeric setting; --max-batch is also at most --max-queue.
    RANGES = {"port": Range(1, 65_535), "max_batch": Range(1, 100_000),
              "max_wait_ms": Range(0, 10_000), "max_queue": Range(1, 1_000_000),
              "max_files": Range(1, 1_000_000), "max_pixels": Range(1, PIXEL_LIMIT),
              "max_gradcam": Range(1, 1_000), "max_upload_mb": Range(0, 4_096, above=True),
              "top_k": Range(1)}

    @property
    def max_upload_bytes(self):
        return int(self.max_upload_mb * 2**20)

    @property
    def files_per_request(self):
        """`(most, option)`: the most images in one request, and the option that says so
        (more than --max-queue could never be queued)."""
        if self.max_files <= self.max_queue:
            return self.max_files, "--max-files"
        return self.max_queue, "--max-queue"

    def check(self):
        """Raises UsageError, in one line, for a setting the server cannot run with."""
        kinds = {field.name: field.type for field in dataclasses.fields(self)}
        for name, allowed in self.RANGES.items():
            value = allowed.check(option(name), getattr(self, name))
            if kinds[name] is int and not isinstance(value, numbers.Integral):
                raise UsageError(f"{option(name)} must be a whole number. Received: {value!r}")
        if self.max_batch > self.max_queue:
            raise UsageError(f"--max-batch must be at most --max-queue ({self.max_queue}). "
                             f"Received: {self.max_batch}")
        if self.token == "":
            raise UsageError("--token must not be empty (leave it out to serve without one).")
        odd = [c for c in self.token or "" if not "!" <= c <= "~"]
        if odd:  # a header is read as Latin-1 bytes: a token of other characters never matches
            raise UsageError(f"--token must be printable ASCII without spaces, as an HTTP "
                             f"header carries it. Received: a token with {odd[0]!r} in it")


def option(name):
    """The command-line option of a setting."""
    return "--" + name.replace("_", "-")


class RequestError(Exception):
    """A request the server refuses: an HTTP status and one sentence."""

    def __init__(self, status, detail, headers=None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


async def read_body(request, settings):
    """The request's body, refused with 413 as soon as it is known to exceed
    --max-upload-mb: from its Content-Length before reading, or while reading it."""
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length")
    too_large = RequestError(413, f"The request is larger than the limit of "
                                  f"{settings.max_upload_mb:g} MB (--max-upload-mb).")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def uploads(content_type, body, name):
    """`(file name, bytes)` of each image in a request: multipart parts with a file name,
    or the whole body when it is sent as an image. Nothing is written to disk."""
    from python_multipart.multipart import FormParser, parse_options_header

    kind, options = parse_options_header(content_type or "")
    kind = kind.decode("latin-1").lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [(name or UPLOAD_NAME, body)] if body else []
    if kind != "multipart/form-data" or b"boundary" not in options:
        raise RequestError(415, "Send images as multipart/form-data (field 'files', repeated) "
                                "or as the raw body with an image/* content type.")
    files = []

    def on_file(part):
        data = part.file_object.getvalue()
        if data or part.file_name:
            files.append(((part.file_name or b"").decode("utf-8", "replace") or UPLOAD_NAME,
                          data))

    # Files stay in memory up to the body's size (the body limit has already been checked).
    parser = FormParser("multipart/form-data", None, on_file, boundary=options[b"boundary"],
                        config={"MAX_MEMORY_FILE_SIZE": len(body) + 1})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart's own errors: a malformed body
        raise RequestError(422, f"The multipart body cannot be read ({error}).") from None
    return files


def decode(name, data, size, max_pixels):
    """One decoded image, or a RequestError in predict's words when it cannot be."""
    try:
        return decode_image(data, name, size, max_pixels=max_pixels)
    except UnreadableImage as error:
        status = 415 if error.reason.startswith(NOT_AN_IMAGE) else 422
        raise RequestError(status, str(error)) from None


def bearer_token(authorization):
    """The credentials of an `Authorization: Bearer ...` header, or None; the scheme's name
    is case-insensitive (RFC 7235)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def validation_detail(error):
    """A request's invalid parameters in one line: the first, and how many others."""
    errors = error.errors()
    first = errors[0]
    where = " ".join(str(part) for part in first.get("loc", ()))
    detail = f"Invalid {where}: {first.get('msg', 'invalid')}."
    if "input" in first and first.get("type") != "missing":
        detail += f" Received: {first['input']!r}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return " ".join(detail.split())


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


def gradcam_png(classifier, pixels, class_name):
    """The Grad-CAM overlay of one image as PNG bytes (TensorFlow, in the engine's thread)."""
    from PIL import Image

    from smallcnn.visualize import gradcam_overlays

    index = None if class_name is None else classifier.class_names.index(class_name)
    overlays, _, _ = gradcam_overlays(classifier, pixels[None], index)
    buffer = io.BytesIO()
    Image.fromarray(overlays[0]).save(buffer, format="PNG")
    return buffer.getvalue()


class Decoder:
    """The images of requests, decoded in DECODE_SLOTS threads of their own: the most
    decoding at once, whatever the number of requests."""

    def __init__(self, settings, size):
        self.settings, self.size = settings, size
        self.threads = None

    def start(self):
        self.threads = concurrent.futures.ThreadPoolExecutor(DECODE_SLOTS, "smallcnn-decode")

    def stop(self):
        self.threads.shutdown(wait=True)

    async def images(self, request, name, most, why):
        """`(files, images)` of a request; more than `most` files (`why` says where that
        limit comes from) is refused with 413 before any is decoded."""
        body = await read_body(request, self.settings)
        files = uploads(request.headers.get("content-type"), body, name)
        if not files:
            raise RequestError(422, "The request has no image: send one or more files in the "
                                    "multipart field 'files', or an image as the body.")
        if len(files) > most:
            raise RequestError(413, f"The request has {len(files)} images: at most {most} "
                                    f"image{'s' * (most > 1)} per request ({why}).")
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(*(
            loop.run_in_executor(self.threads, decode, name, data, self.size,
                                 self.settings.max_pixels) for name, data in files),
            return_exceptions=True)
        for image in images:  # the first file that cannot be decoded answers for the request
            if isinstance(image, BaseException):
                raise image
        return files, images


def guard(app, settings, stats):
    """What every request passes through: the token, its count in `stats`, refusals as
    `{"detail": "one line"}`, a JSON 500 for anything unexpected, and CORS when asked."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse

    open_paths = {"/", "/health", "/docs", "/openapi.json"}
    known_paths = open_paths | {"/model", "/metrics", "/predict", "/gradcam"}

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"detail": error.detail}, error.status, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error):
        return JSONResponse({"detail": validation_detail(error)}, 422)

    @app.exception_handler(DataError)
    async def unusable(request, error):  # data the library refuses, wherever it is found
        return JSONResponse({"detail": first_line(error)}, 422)

    @app.middleware("http")
    async def measure_and_guard(request, call_next):
        started = time.perf_counter()
        path = request.url.path
        given = bearer_token(request.headers.get("authorization", "")) or ""
        try:
            if settings.token and path not in open_paths and not secrets.compare_digest(
                    given.encode("latin-1"), settings.token.encode("ascii")):
                response = JSONResponse({"detail": "Missing or wrong bearer token (--token)."},
                                        401, headers={"WWW-Authenticate": "Bearer"})
            else:
                response = await call_next(request)
        except Exception:  # a bug: logged here in full, one line to the client
            log.exception("internal error answering %s %s", request.method, path)
            response = JSONResponse({"detail": INTERNAL_ERROR}, 500)
        stats.request(path if path in known_paths else "other", response.status_code,
                      time.perf_counter() - started)
        return response

    if settings.cors:  # outermost: it answers browsers' preflight requests, which carry no token
        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors], allow_methods=["*"],
                           allow_headers=["*"])


def add_info_routes(app, classifier, stats, state):
    """The page, and what the server says about itself: /health, /model, /metrics."""
    from fastapi import Query
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        """Ready once the model is loaded and has run once."""
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, 503)
        return {"status": "ready"}

    @app.get("/model")
    async def model():
        """Classes, base, image size, the run's metrics, the smallcnn version."""
        return model_info(classifier)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(format: str = Query("prometheus", pattern="^(prometheus|json)$")):
        """Requests, latency quantiles, images/s: Prometheus text, or `?format=json`."""
        if format == "json":
            return JSONResponse(stats.to_dict())
        return PlainTextResponse(stats.prometheus(), media_type="text/plain; version=0.0.4")


def create_app(classifier, run, settings=ServeSettings()):
    """The FastAPI app serving `classifier`, whose batches `run` (see MicroBatcher) runs.

    The app is ready (`GET /health` 200) once its engine has run one batch.

    Raises:
        UsageError: a setting out of its range (`ServeSettings.check`).
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import Response

    from smallcnn.serve.batcher import MicroBatcher, QueueFull
    from smallcnn.serve.stats import Stats

    settings.check()
    stats = Stats()
    batcher = MicroBatcher(run, settings.max_batch, settings.max_wait_ms, settings.max_queue,
                           on_batch=stats.batch, max_tasks=settings.max_gradcam)
    state = {"ready": False}
    size = classifier.image_size
    decoder = Decoder(settings, size)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        decoder.start()
        await batcher.start()
        await batcher.in_engine(run, np.zeros((1, size, size, 3), np.uint8))  # warm up
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()  # what was accepted is answered before the process exits
        decoder.stop()

    app = FastAPI(title="smallcnn", version=__version__, lifespan=lifespan,
                  description=f"Image classification with a smallcnn model "
                              f"({len(classifier.class_names)} classes).")
    guard(app, settings, stats)

    add_info_routes(app, classifier, stats, state)

    @app.post("/predict", openapi_extra=BODY_DOC)
    async def predict(request: Request, top_k: int = Query(settings.top_k, ge=1),
                      name: str = Query(None, description="The file name of a raw-body image.")):
        """Top-k classes of each image: the JSON of `smallcnn predict --json`."""
        files, images = await decoder.images(request, name, *settings.files_per_request)
        try:
            rows = await batcher.submit(images)
        except QueueFull as error:
            raise RequestError(503, f"The server is busy: {error}. Retry in a second.",
                               {"Retry-After": "1"}) from None
        return [classifier.prediction(path, row, top_k).to_dict()
                for (path, _), row in zip(files, rows)]

    @app.post("/gradcam", openapi_extra=BODY_DOC,
              responses={200: {"content": {"image/png": {}}}})
    async def gradcam(request: Request, class_name: str = Query(None, alias="class")):
        """The Grad-CAM overlay (PNG) of one image: where the model looked."""
        if not gradcam_available(classifier):
            raise RequestError(501, "Grad-CAM needs a run folder's model and TensorFlow; this "
                                    "server has " + ("no TensorFlow." if classifier.run_dir
                                                     else "an exported model."))
        if class_name is not None and class_name not in classifier.class_names:
            raise RequestError(422, f"class {class_name!r} is not one of the model's classes: "
                                    f"{', '.join(classifier.class_names)}.")
        _, images = await decoder.images(request, None, 1, "one overlay per request")
        try:
            png = await batcher.run_task(gradcam_png, classifier, images[0], class_name)
        except QueueFull:
            raise RequestError(503, f"The server is busy: {settings.max_gradcam} Grad-CAM "
                                    f"requests are waiting or running (--max-gradcam). Retry "
                                    f"in a second.", {"Retry-After": "1"}) from None
        return Response(png, media_type="image/png")

    app.state.batcher, app.state.stats = batcher, stats
    return app
