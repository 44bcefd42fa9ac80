"""Stopping what the project starts: a SIGTERM to `rhd broker` stops its broker process too, Tansu or Apache Kafka
(it runs in a session of its own, out of reach of the terminal's signals, and was left running)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rhd.local.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_rhd_broker_stops_its_broker_process(tmp_path, broker_kind):
    port, tansu = free_port(), []
    kafka = ["--kafka", "--data-dir", str(tmp_path)] if broker_kind == "kafka" else []
    rhd = subprocess.Popen(
        [sys.executable, "-m", "rhd.cli", "broker", "--port", str(port), *kafka],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RHD_LOG_LEVEL": "WARNING"},
    )
    try:
        for line in rhd.stdout:  # type: ignore[union-attr]
            if "broker ready" in line:
                break
        tansu = children(rhd.pid)
        assert tansu and all(alive(p) for p in tansu), "the broker process was not started"
        rhd.send_signal(signal.SIGTERM)
        assert rhd.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(alive(p) for p in tansu) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in tansu), f"{broker_kind} left running after SIGTERM"
    finally:
        if rhd.poll() is None:
            rhd.kill()
        for p in tansu:
            if alive(p):
                os.kill(p, signal.SIGKILL)
