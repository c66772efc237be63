"""A bounded load generator for the serving tests: N concurrent clients on loopback, every outcome recorded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class Load:
    """Threads posting completions until stopped, or until the request or time budget runs out."""

    base_url: str  # e.g. http://127.0.0.1:PORT
    model: str
    api_key: str | None = None
    max_requests: int = 2000
    max_seconds: float = 300.0
    max_tokens: int = 16
    pause_s: float = 0.0  # between one client's requests: a trickle that leaves the cores to what is under test
    outcomes: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.outcomes.items() if status != 200)

    def concurrency(self, n: int) -> None:
        """Grow to n concurrent clients (never shrinks: a ramp)."""
        self._started = self._started or time.monotonic()
        while len(self._threads) < n:
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _budget_left(self) -> bool:
        return self.sent < self.max_requests and time.monotonic() - self._started < self.max_seconds

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "prompt": "the cat runs", "max_tokens": self.max_tokens, "ignore_eos": True}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=180) as client:
            while not self._stop.is_set() and self._budget_left():
                try:
                    status = client.post("/v1/completions", json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    with self._lock:
                        self.errors.append(repr(exc))
                with self._lock:
                    self.outcomes[status] += 1
                self._stop.wait(self.pause_s)
