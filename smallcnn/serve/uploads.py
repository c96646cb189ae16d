"""The images a request uploads: its body read within --max-upload-mb, its files (multipart
parts or a raw body), each decoded in a thread of its own, and the refusals on the way."""

import asyncio
import concurrent.futures
import os

from smallcnn.data.images import UnreadableImage, decode_image

NOT_AN_IMAGE = "not an image"  # the start of `UnreadableImage.reason` for a foreign file
UPLOAD_NAME = "upload"  # the `path` of an image sent as a raw body without ?name=
MALFORMED_MULTIPART = "The multipart body cannot be read ({})."  # with python-multipart's reason
# Images decoded at once, one per core: decoding is the server's largest use of memory.
DECODE_SLOTS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)


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
    from python_multipart.exceptions import FormParserError

    try:
        return _uploads(content_type, body, name)
    # Whatever python-multipart refuses (the header, its boundary, the body), at any step,
    # is the client's malformed request; a header it cannot encode is one too.
    except (FormParserError, UnicodeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise RequestError(422, MALFORMED_MULTIPART.format(reason)) from None


def _uploads(content_type, body, name):
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
    parser.write(body)
    parser.finalize()
    return files


def decode(name, data, size, max_pixels):
    """One decoded image, or a RequestError in predict's words when it cannot be."""
    try:
        return decode_image(data, name, size, max_pixels=max_pixels)
    except UnreadableImage as error:
        status = 415 if error.reason.startswith(NOT_AN_IMAGE) else 422
        raise RequestError(status, str(error)) from None


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
