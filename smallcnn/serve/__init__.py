"""`smallcnn serve`: a trained model behind an HTTP API and a web page.

    smallcnn serve [RUN|MODEL] [--host 127.0.0.1] [--port 8000] [--token T] [--cors ORIGIN]

The limits each request meets (body, files, pixels, queue, Grad-CAM) are `ServeSettings`;
docs/serve.md lists them with the status code of each refusal.

`settings.py` declares the options, `app.py` builds the FastAPI app and what every request
passes through (the token, counts, refusals), `routes.py` holds the routes (POST /predict,
POST /gradcam, GET /health, /model, /metrics, the page at /) and the state they share,
`uploads.py` reads and decodes a request's images, `batcher.py` gathers concurrent requests
into batches for the engine, `stats.py` counts what the server did, `page.html` is the web
page (plain JavaScript, no external requests). `smallcnn label POOL --data DATA` is a
page on the same guard: `labelling.py` (the session), `label_store.py` (what it writes
into DATA), `label_routes.py`, `label_page.html`. It may import `visualize` (Grad-CAM),
`labels` (suggest's ranking), `inference` (the loaded model) and what is below them;
nothing imports it but the CLI.
"""

import ipaddress
import socket

from smallcnn.progress import Reporter
from smallcnn.serve.app import ServeSettings, create_app, run_server

__all__ = ["ServeSettings", "build_app", "exposure_warning", "is_loopback", "serve"]


def build_app(model=None, settings=ServeSettings()):
    """Loads a model (a run folder, its model.keras, or an exported file; default the
    latest run) and returns `(app, classifier)`: the FastAPI app serving it.

    Raises:
        UsageError: a setting out of its range, before the model is loaded.
    """
    from smallcnn.inference.predict import load

    settings.check()  # before the model loads: a wrong option is refused at once
    classifier = load(model)
    run = classifier.batch_runner(settings.max_batch)
    return create_app(classifier, run, settings), classifier


def is_loopback(host):
    """Whether `host` (a name or an address) only listens on this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                                   for a in addresses)


def exposure_warning(settings):
    """What to say when the server listens beyond this machine without a token."""
    if is_loopback(settings.host) or settings.token:
        return None
    return (f"serving on {settings.host}, beyond this machine, without authentication: anyone "
            "who can reach it can use the model (--token TOKEN requires a bearer token).")


def serve(model=None, settings=ServeSettings(), reporter=Reporter()):
    """Serves a model until SIGINT or SIGTERM; in-flight requests are answered first."""
    app, classifier = build_app(model, settings)
    warning = exposure_warning(settings)
    if warning:
        reporter.warning(warning)
    where = f"http://{settings.host}:{settings.port}"
    reporter.note(f"serving {classifier.run_dir or getattr(classifier, 'path', model)} "
                  f"({len(classifier.class_names)} classes, engine: {classifier.engine}) at "
                  f"{where}: the page at {where}/, the API's docs at {where}/docs")
    run_server(app, settings.host, settings.port, timeout_graceful_shutdown=30)
