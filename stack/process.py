"""What every chat process does the same way: logging, stop signals."""

from __future__ import annotations

import logging
import signal
from types import FrameType


def setup_logging(name: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s",
    )


class Stopping:
    """Set by SIGTERM or SIGINT; a sync loop checks it and winds down."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> Stopping:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
