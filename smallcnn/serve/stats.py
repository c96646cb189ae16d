"""What the server has done: requests, latencies, images, batches; as Prometheus text."""

import collections
import time

import numpy as np

QUANTILES = (0.5, 0.9, 0.99)
RECENT = 10_000  # latencies kept per endpoint for the quantiles
RATE_WINDOW = 60.0  # seconds over which images/s is measured


class Stats:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.started = clock()
        self.requests = collections.Counter()  # (endpoint, status) -> count
        self.latencies = collections.defaultdict(lambda: collections.deque(maxlen=RECENT))
        self.latency_sums = collections.Counter()
        self.images = 0
        self.batches = 0
        self.batched_images = 0
        self._recent_images = collections.deque()  # (time, count)

    def request(self, endpoint, status, seconds):
        self.requests[endpoint, status] += 1
        self.latencies[endpoint].append(seconds)
        self.latency_sums[endpoint] += seconds

    def batch(self, size, seconds):
        now = self.clock()
        self.batches += 1
        self.batched_images += size
        self.images += size
        self._recent_images.append((now, size))

    def images_per_second(self):
        now = self.clock()
        while self._recent_images and self._recent_images[0][0] < now - RATE_WINDOW:
            self._recent_images.popleft()
        window = min(RATE_WINDOW, max(now - self.started, 1e-9))
        return sum(count for _, count in self._recent_images) / window

    def to_dict(self):
        endpoints = {}
        for endpoint, values in self.latencies.items():
            ordered = np.asarray(values)
            endpoints[endpoint] = {
                "requests": {str(s): n for (e, s), n in self.requests.items() if e == endpoint},
                **{f"p{round(q * 100)}_ms": float(np.quantile(ordered, q) * 1000)
                   for q in QUANTILES}}
        return {"uptime_seconds": self.clock() - self.started, "images": self.images,
                "images_per_second": self.images_per_second(), "batches": self.batches,
                "mean_batch": self.batched_images / self.batches if self.batches else 0.0,
                "endpoints": endpoints}

    def prometheus(self):
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = ["# HELP smallcnn_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE smallcnn_requests_total counter"]
        for (endpoint, status), count in sorted(self.requests.items()):
            lines.append(f'smallcnn_requests_total{{endpoint="{endpoint}",status="{status}"}} '
                         f"{count}")
        lines += ["# HELP smallcnn_request_seconds Request latency (quantiles of the last "
                  f"{RECENT} per endpoint).", "# TYPE smallcnn_request_seconds summary"]
        for endpoint, values in sorted(self.latencies.items()):
            ordered = np.asarray(values)
            for q in QUANTILES:
                lines.append(f'smallcnn_request_seconds{{endpoint="{endpoint}",quantile="{q}"}} '
                             f"{np.quantile(ordered, q):.6f}")
            count = sum(n for (e, _), n in self.requests.items() if e == endpoint)
            lines.append(f'smallcnn_request_seconds_sum{{endpoint="{endpoint}"}} '
                         f"{self.latency_sums[endpoint]:.6f}")
            lines.append(f'smallcnn_request_seconds_count{{endpoint="{endpoint}"}} {count}')
        lines += ["# HELP smallcnn_images_total Images classified.",
                  "# TYPE smallcnn_images_total counter", f"smallcnn_images_total {self.images}",
                  "# HELP smallcnn_batches_total Batches run by the engine.",
                  "# TYPE smallcnn_batches_total counter", f"smallcnn_batches_total {self.batches}",
                  f"# HELP smallcnn_images_per_second Images classified per second over the "
                  f"last {RATE_WINDOW:.0f} s.", "# TYPE smallcnn_images_per_second gauge",
                  f"smallcnn_images_per_second {self.images_per_second():.3f}"]
        return "\n".join(lines) + "\n"
