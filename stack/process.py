"""What every chat process does the same way: logging, stop signals, the garbage collector."""

from __future__ import annotations

import gc
import json
import logging
import signal
from types import FrameType

LOG_FORMATS = ("text", "json")
# allocations (less deallocations) between two collections of the youngest GC generation: handling
# an event allocates thousands of short-lived containers that reference counting frees, and at
# Python's default (700) the collector ran many times a dispatch in a worker, scanning what it still
# held (a quarter to a third of the CPU of full dispatches); cycles are still collected, less often
GC_YOUNG = 50_000


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, part, instance, pid, level, logger, event, and the
    record's `fields` (pass `extra={"fields": {...}}`) and exception, where present."""

    def __init__(self, part: str, instance: str = "") -> None:
        super().__init__()
        self.part = part
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": round(record.created, 6),
            "part": self.part,
            "instance": self.instance,
            "pid": record.process,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update({str(k): v for k, v in fields.items() if k not in obj})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False).replace("\u2028", "\\u2028").replace(
            "\u2029", "\\u2029")


def setup_logging(name: str, level: str, fmt: str = "text") -> None:
    """Log to stderr, as text or one JSON object a line (`fmt`: text or json)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(name))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)


def set_log_instance(instance: str) -> None:
    """Name this process's instance in its JSON log lines, once it is known."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.instance = instance


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


def tune_gc() -> None:
    """Collect cycles less often (GC_YOUNG), and never scan again what start-up made (it lives as long
    as the process): call it once everything long-lived is set up."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)
