"""Signals for the commands that start processes of their own. Kept apart from the stack so that every command,
`rhd serve` among them, can take it without importing the stack's dependencies."""

import signal
import threading


def stop_on_sigterm() -> None:
    """SIGTERM as Ctrl-C: a command that starts processes of its own (broker, model server, stages) stops them in
    its `finally` blocks whichever way it is told to stop. (Python's default for SIGTERM is to die at once, which
    left a started broker running: it runs in a session of its own, out of reach of the terminal's signals.)"""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, interrupt)
