"""The FastAPI app around one loaded model: its routes (`routes.py`), and what every request
passes through (the token, the counts, refusals as one line, a JSON 500)."""

import logging
import secrets
import time

from smallcnn import __version__
from smallcnn.errors import DataError, first_line
from smallcnn.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run_server"]

INTERNAL_ERROR = "internal error: the server logged it; please report it."
log = logging.getLogger(__name__)


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


def guard(app, settings, stats):
    """What every request passes through: the token, its count in `stats`, refusals as
    `{"detail": "one line"}`, a JSON 500 for anything unexpected, and CORS when asked."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse

    from smallcnn.serve.uploads import RequestError

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


def create_app(classifier, run, settings=ServeSettings()):
    """The FastAPI app serving `classifier`, whose batches `run` (see MicroBatcher) runs.

    The app is ready (`GET /health` 200) once its engine has run one batch.

    Raises:
        UsageError: a setting out of its range (`ServeSettings.check`).
    """
    from fastapi import FastAPI

    from smallcnn.serve.routes import Served, image_routes, info_routes

    settings.check()
    served = Served.build(classifier, run, settings)
    app = FastAPI(title="smallcnn", version=__version__, lifespan=lambda app: served.running(),
                  description=f"Image classification with a smallcnn model "
                              f"({len(classifier.class_names)} classes).")
    guard(app, settings, served.stats)
    app.include_router(info_routes)
    app.include_router(image_routes)
    app.state.served = served
    app.state.batcher, app.state.stats = served.batcher, served.stats
    return app


def run_server(app, host, port, **config):
    """Runs `app` under uvicorn until SIGINT or SIGTERM, and returns (exit status 0) once
    the graceful shutdown is over: uvicorn itself raises the signal again once shut down,
    which would kill the process. `config`: more of uvicorn's `Config`."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **config)).run()
