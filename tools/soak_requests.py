"""What bench/soak.py's clients send to `smallcnn serve`, and how each answer is judged
against the statuses docs/serve.md promises (tests/test_soak.py runs the same, shorter).

Each kind in KINDS draws a `Sent` from the `Materials`: good images (photos and the odd but
readable files of tools/corpus.py), the corpus's damaged files, a BOMB_SIDE-square RGBA
PNG, bodies over the limits, malformed multipart, wrong content types, bad ?top_k=, Grad-CAMs.
"""

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from smallcnn.serve import ServeSettings
from smallcnn.serve.uploads import NOT_AN_IMAGE
from tools.corpus import CASES

BOMB_SIDE = 9400  # 88 megapixels: above --max-pixels, below Pillow's own limit
TOLERANCE = 1e-5  # between a probability served and predict's for the same file
BUSY = 503  # a full queue or --max-gradcam: allowed with Retry-After, and counted
# Bodies that python-multipart refuses, or that hold no complete file.
MALFORMED = [
    b"not a multipart body",
    b"--SOAK\r\nbroken header line\r\n\r\nabc\r\n--SOAK--\r\n",
    b"--SOAK\r\n\x00\x01\xff\r\n\r\n",
    b'--SOAK\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\nabc',
    b"--SOAK--\r\n",
]


@dataclasses.dataclass
class Materials:
    """What the clients send: `good` and `damaged` are lists of `(name, bytes)`,
    `promised` the status of each damaged name."""

    good: list
    damaged: list
    promised: dict
    bomb: bytes
    settings: ServeSettings
    classes: int


@dataclasses.dataclass
class Sent:
    """One request: httpx's arguments, the statuses docs/serve.md promises for it, and
    the names of the good images it carries (their probabilities are checked)."""

    method: str
    path: str
    kwargs: dict
    statuses: set
    names: list = dataclasses.field(default_factory=list)


def bomb_png(side=BOMB_SIDE):
    """A `side`-square RGBA PNG of one colour: a few hundred KB that decode to side^2 * 4 bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 4), np.uint8), "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def corpus_files(folder):
    """tools/corpus.py's files written to `folder`: `(readable paths, {damaged path: status})`,
    the status docs/serve.md gives (415 for what is not an image, 422 for a damaged one)."""
    folder.mkdir(parents=True, exist_ok=True)
    readable, damaged = [], {}
    for name, filename, writer, expected in CASES:
        path = folder / f"{name}-{filename}"
        path.write_bytes(writer())
        if expected is None:
            readable.append(path)
        else:
            damaged[path] = 415 if expected.startswith(NOT_AN_IMAGE) else 422
    return readable, damaged


def materials(good, damaged, settings, classes):
    """The clients' materials from image files: `good` a list of paths (served under their
    own names, which must differ), `damaged` {path: status}."""
    return Materials(good=[(p.name, p.read_bytes()) for p in good],
                     damaged=[(p.name, p.read_bytes()) for p in damaged],
                     promised={p.name: status for p, status in damaged.items()},
                     bomb=bomb_png(), settings=settings, classes=classes)


def expected_probabilities(rows):
    """`{file name: {label: probability}}` from `smallcnn predict --json --top-k ALL`'s rows."""
    return {Path(row["path"]).name: {t["label"]: t["probability"] for t in row["top"]}
            for row in rows}


def multipart(pairs):
    return {"files": [("files", (name, data, "application/octet-stream")) for name, data in pairs]}


def good(rng, m, count=1):
    pairs = rng.sample(m.good, count)
    return Sent("POST", f"/predict?top_k={m.classes}", multipart(pairs), {200, BUSY},
                [name for name, _ in pairs])


def raw(rng, m):
    name, data = rng.choice(m.good)
    return Sent("POST", f"/predict?top_k={m.classes}&name={name}",
                {"content": data, "headers": {"content-type": "image/jpeg"}}, {200, BUSY}, [name])


def damaged(rng, m):
    name, data = rng.choice(m.damaged)
    return Sent("POST", "/predict", multipart([(name, data)]), {m.promised[name]})


def oversized(rng, m):
    """A body one byte over --max-upload-mb: with its length, or sent in chunks without."""
    size = m.settings.max_upload_bytes + 1
    chunk = 1 << 16
    body = (bytes(size) if rng.random() < 0.5 else
            (bytes(min(chunk, size - at)) for at in range(0, size, chunk)))
    return Sent("POST", "/predict", {"content": body, "headers": {"content-type": "image/png"}},
                {413})


def too_many(rng, m):
    most, _ = m.settings.files_per_request
    return Sent("POST", "/predict", multipart([min(m.good, key=lambda p: len(p[1]))] * (most + 1)),
                {413})


def malformed(rng, m):
    return Sent("POST", "/predict", {"content": rng.choice(MALFORMED), "headers": {
        "content-type": "multipart/form-data; boundary=SOAK"}}, {422})


def wrong_type(rng, m):
    _, data = rng.choice(m.good)
    # The last: multipart without its boundary.
    kind = rng.choice(["text/plain", "application/json", "multipart/form-data"])
    return Sent("POST", "/predict", {"content": data, "headers": {"content-type": kind}}, {415})


def bad_query(rng, m):
    value = rng.choice(["0", "-1", "abc", "1e3", ""])
    return Sent("POST", f"/predict?top_k={value}", multipart(rng.sample(m.good, 1)), {422})


def gradcam(rng, m):
    return Sent("POST", "/gradcam", multipart(rng.sample(m.good, 1)), {200, BUSY})


# Each kind of request, and how often it is drawn (weights).
KINDS = {
    "good image": (good, 30),
    "good images, 2 to 4": (lambda rng, m: good(rng, m, rng.randint(2, min(4, len(m.good)))), 10),
    "good image, raw body": (raw, 6),
    "damaged file": (damaged, 15),
    "bomb": (lambda rng, m: Sent("POST", "/predict", multipart([("bomb.png", m.bomb)]), {422}), 4),
    "body over --max-upload-mb": (oversized, 4),
    "files over --max-files": (too_many, 4),
    "malformed multipart": (malformed, 6),
    "wrong content type": (wrong_type, 5),
    "bad top_k": (bad_query, 6),
    "gradcam": (gradcam, 6),
}


def judge(sent, answer, expected):
    """What is wrong with `answer` to `sent`, in one line, or None."""
    status = answer.status_code
    if status not in sent.statuses:
        return f"status {status} (promised {sorted(sent.statuses)}): {answer.text[:120]!r}"
    if status != 200:
        try:
            body = answer.json()
        except ValueError:
            return f"status {status} without a JSON body: {answer.text[:120]!r}"
        if not (isinstance(body, dict) and set(body) == {"detail"}
                and isinstance(body["detail"], str) and "\n" not in body["detail"]):
            return f"status {status} without one line of detail: {answer.text[:120]!r}"
        if status == BUSY and answer.headers.get("retry-after") != "1":
            return f"503 without Retry-After: {body['detail']}"
        return None
    if sent.path.startswith("/gradcam"):
        ok = (answer.headers.get("content-type") == "image/png"
              and answer.content.startswith(b"\x89PNG"))
        return None if ok else f"Grad-CAM answered {answer.headers.get('content-type')}"
    return wrong_probabilities(sent.names, answer.json(), expected)


def wrong_probabilities(names, rows, expected):
    if [row["path"] for row in rows] != names:
        return f"answered {[row['path'] for row in rows]} for {names}"
    for name, row in zip(names, rows):
        got = {t["label"]: t["probability"] for t in row["top"]}
        want = expected[name]
        if got.keys() != want.keys():
            return f"{name}: classes {sorted(got)}, predict's {sorted(want)}"
        worst = max(abs(got[label] - want[label]) for label in want)
        if worst > TOLERANCE:
            return f"{name}: a probability {worst:.2g} away from predict's"
    return None

