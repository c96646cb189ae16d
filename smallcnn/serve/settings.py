"""What `smallcnn serve` is told: the address, the batching and the limits each request meets."""

import dataclasses
import numbers

from smallcnn.data.images import PIXEL_LIMIT
from smallcnn.errors import UsageError
from smallcnn.inference.classifier import TOP_K
from smallcnn.runtime.ranges import Range


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
    top_k: int = TOP_K
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
