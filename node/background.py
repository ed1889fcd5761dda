"""A piece of the node that works in a thread of its own until the node stops: the
worker, the receiver's watchdog, the forwarder, the catch-up, the monitor.

None of them can die quietly. An unexpected error that ends a part's loop is logged
with its reason and the loop is started again after a back-off (1 s, doubling to a
minute). A part whose loop fails FAILURES_TO_DIE times within FAILURE_WINDOW_S cannot go
on: it is marked dead and `on_death` is called, and the node stops so that cxr-node
exits non-zero and a service manager restarts it. `health()` says how each part is,
for /status.json and the review page.
"""
import collections
import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

log = logging.getLogger("cxr_edge.node")

FAILURES_TO_DIE = 5
FAILURE_WINDOW_S = 600.0
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 60.0


class Background:
  """Runs `_run` (or `target`) in a daemon thread, started again after an unexpected
  error; `stop()` sets `_stop` and ends any wait; `wake()` ends the current wait on
  `_wake` early (new work)."""

  def __init__(self, name: str, join_seconds: float = 60.0,
               target: Optional[Callable[[], None]] = None):
    self.name = name
    self._stop = threading.Event()
    self._wake = threading.Event()
    self._join_seconds = join_seconds
    self._target = target
    self._loop_failures: collections.deque = collections.deque(maxlen=FAILURES_TO_DIE)
    self.restarts = 0
    self.last_error: Optional[str] = None
    self.dead: Optional[str] = None  # why the part cannot go on
    self.on_death: Optional[Callable[["Background"], None]] = None
    self._thread = threading.Thread(target=self._supervised, name=name, daemon=True)

  def _run(self) -> None:
    if self._target is None:
      raise NotImplementedError
    self._target()

  def _supervised(self) -> None:
    backoff = FIRST_BACKOFF_S
    while not self._stop.is_set():
      try:
        self._run()
        return  # the loop ends when the part is stopped
      except Exception as e:  # pylint: disable=broad-except  # whatever it is, it is said
        now = time.monotonic()
        self._loop_failures.append(now)
        self.last_error = f"{type(e).__name__}: {str(e)[:200]}"
        recent = sum(now - t <= FAILURE_WINDOW_S for t in self._loop_failures)
        if recent >= FAILURES_TO_DIE:
          self.dead = (f"failed {recent} times in {FAILURE_WINDOW_S / 60:g} minutes "
                       f"(last: {self.last_error})")
          log.critical("%s cannot go on: %s", self.name, self.dead, exc_info=True)
          if self.on_death is not None:
            self.on_death(self)
          return
        self.restarts += 1
        log.error("%s failed (%s); started again in %g s", self.name, self.last_error,
                  backoff, exc_info=True)
        self._stop.wait(backoff)
        backoff = min(2 * backoff, MAX_BACKOFF_S)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    self._wake.set()
    if self._thread.is_alive():
      self._thread.join(timeout=self._join_seconds)

  def wake(self) -> None:
    self._wake.set()

  def _pause(self, seconds) -> None:
    """Waits `seconds` (None: until woken), or less if woken or stopped."""
    self._wake.wait(timeout=seconds)
    self._wake.clear()

  def health(self) -> Dict[str, Any]:
    """{"running", "restarts" (after an unexpected error), "last_error", "dead" (why it
    cannot go on, or None)}."""
    return {"running": self._thread.is_alive() and self.dead is None,
            "restarts": self.restarts, "last_error": self.last_error, "dead": self.dead}
