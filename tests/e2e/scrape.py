"""Reading a part's Prometheus metrics over HTTP, for the end-to-end tests."""

from __future__ import annotations

import re
import urllib.request


class Scrape:
    def __init__(self, address: str) -> None:
        self.url = f"http://{address}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            return resp.read().decode()

    def value(self, sample: str) -> float:
        match = re.search(rf"^{re.escape(sample)} (\S+)$", self.text(), re.MULTILINE)
        assert match, f"no {sample} in the scrape"
        return float(match.group(1))
