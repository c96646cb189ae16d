"""Ctrl-C and SIGTERM as a request to stop training, not a crash."""

import signal
import threading


class StopRequest:
    """While installed, SIGINT and SIGTERM are recorded in `received` instead of killing.

    Training loops check it (or get `on_signal` called) and end as if early stopping
    had fired, so the run is saved. A second Ctrl-C stops at once (KeyboardInterrupt).
    """

    def __init__(self, on_signal=None):
        self.received = None
        self._on_signal = on_signal
        self._previous = {}

    def __call__(self):
        return self.received is not None

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self._on_signal is not None:
            self._on_signal()

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        self.uninstall()
        return False
