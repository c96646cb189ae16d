"""The routes of `smallcnn label`: the page at /, and its API under /api/ (the session's
state, the next images, one image's guess and its file, an answer). Refusals are the
server's: a JSON `{"detail": "one line"}` with a 4xx status, through `app.guard`."""

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, StrictInt

from smallcnn import __version__
from smallcnn.serve.app import guard
from smallcnn.serve.settings import ServeSettings
from smallcnn.serve.stats import Stats

PAGE = Path(__file__).with_name("label_page.html")
MOST_AT_ONCE = 50  # images GET /api/next gives at most

label_routes = APIRouter()


class Answer(BaseModel):
    """One answer: the image's id (from GET /api/next) and a class, "skip" or "none"."""

    id: StrictInt  # not a boolean, nor a number in a string
    answer: str


def session(request: Request):
    """The labelling session, for a route's `Depends`."""
    return request.app.state.labelling


@label_routes.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@label_routes.get("/health")
async def health():
    return {"status": "ready"}


@label_routes.get("/api/state")
def state(labelling=Depends(session)):
    """Classes and their keys, counts, the validation accuracy as labels grew."""
    return labelling.state()


@label_routes.get("/api/next")
def next_images(labelling=Depends(session),
                count: int = Query(1, ge=1, le=MOST_AT_ONCE, description="Images wanted.")):
    """The next images worth labelling, best first, each with the model's guess."""
    return labelling.next(count)


@label_routes.get("/api/item/{index}")
def item(index: int, labelling=Depends(session)):
    """One pool image's name and the model's guess, as GET /api/next gives them."""
    return labelling.describe(index)


@label_routes.get("/api/image/{index}")
def image(index: int, labelling=Depends(session)):
    """The file of one pool image."""
    return FileResponse(labelling.image_path(index), headers={"Cache-Control": "no-store"})


@label_routes.post("/api/answer")
def answer(given: Answer, labelling=Depends(session)):
    """Writes one answer at once; a second answer for the same image is a no-op."""
    return labelling.answer(given.id, given.answer)


def create_label_app(labelling, settings):
    """The FastAPI app of a `Labelling` session (`settings`: a `LabelSettings`)."""
    app = FastAPI(title="smallcnn label", version=__version__,
                  description=f"Labelling into {labelling.store.where}.")
    guard(app, ServeSettings(host=settings.host, port=settings.port), Stats())
    app.include_router(label_routes)
    app.state.labelling = labelling
    return app
