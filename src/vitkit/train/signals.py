"""Graceful interruption: the first SIGINT / SIGTERM asks the loop to stop after the current step (it then
saves ``last`` and exits 130 / 143); a second SIGINT stops at once."""

from __future__ import annotations

import signal
import sys


class StopRequest:
    """Installs the handlers on ``__enter__`` and restores the previous ones on ``__exit__``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum or 0)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now (the last complete checkpoint stays)
        self.signum = signum
        if self.announce:  # only a second Ctrl-C stops at once: SIGTERM's announcement does not offer it
            name = signal.Signals(signum).name
            again = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            print(f"\n{name} received: finishing this step and saving checkpoints/last{again}", file=sys.stderr,
                  flush=True)

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
