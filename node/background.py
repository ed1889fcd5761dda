"""A piece of the node that works in a thread of its own until the node stops: the
receiver's watchdog, the forwarder, the catch-up, the monitor."""
import threading


class Background:
  """Runs `_run` in a daemon thread; `stop()` sets `_stop` and ends any wait; `wake()`
  ends the current wait on `_wake` early (new work)."""

  def __init__(self, name: str, join_seconds: float = 60.0):
    self._stop = threading.Event()
    self._wake = threading.Event()
    self._join_seconds = join_seconds
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)

  def _run(self) -> None:
    raise NotImplementedError

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
