"""The process supervisor behind `manage.py runris`, on the standard library alone.

runris works out the component commands with Django's settings, then replaces itself with
`python -P ris/supervisor.py '<json>'`: the same pid, but without Django, pydicom, Celery and
the rest loaded (~100 MB less in a process that only starts, watches and stops children).

Each child runs in its own session so that Ctrl-C reaches only this supervisor, which then
stops them in order. A child that dies is restarted with a growing back-off. Every output
line is prefixed with the component's name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STOP_GRACE_SECONDS = 10
MAX_BACKOFF_SECONDS = 30


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    output_threads: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    def __init__(self, commands: dict[str, list[str]], cwd: str, write: Callable[[str], None]) -> None:
        self.children = [Child(name, argv) for name, argv in commands.items()]
        self.cwd = cwd
        self.write = write
        self.stopping = threading.Event()
        self.width = max(len(name) for name in commands)

    def log(self, name: str, line: str) -> None:
        self.write(f"{name:<{self.width}} | {line}")

    def start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log(child.name, f"started (pid {child.process.pid}): {' '.join(child.argv[1:])}")
        thread = threading.Thread(target=self.pump, args=(child, child.process), daemon=True)
        thread.start()
        child.output_threads = [thread]

    def pump(self, child: Child, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            self.log(child.name, raw.decode("utf-8", errors="replace").rstrip())

    def run(self) -> None:
        for child in self.children:
            self.start(child)
        while not self.stopping.wait(0.5):
            for child in self.children:
                self.watch(child)
        self.stop_all()

    def watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.process is None:
            if now >= child.next_start:
                self.start(child)
            return
        code = child.process.poll()
        if code is None:
            return
        child.restarts += 1
        backoff = min(2 ** min(child.restarts, 5), MAX_BACKOFF_SECONDS)
        self.log(child.name, f"exited with code {code}; restarting in {backoff} s")
        child.process, child.next_start = None, now + backoff

    def stop_all(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            self.log(child.name, "stopping")
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(child.name, f"still running after {STOP_GRACE_SECONDS} s; killing")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            for thread in child.output_threads:
                thread.join(timeout=1)
            self.log(child.name, f"stopped (code {child.process.returncode})")


def exec_argv(commands: dict[str, list[str]], cwd: str) -> list[str]:
    """The argv that replaces the calling process with this supervisor (-P: this file's folder,
    ris/, is not put first on sys.path, where ris/celery.py would shadow the celery package)."""
    spec = json.dumps({"commands": commands, "cwd": cwd})
    return [sys.executable, "-P", os.path.abspath(__file__), "runris", spec]


def write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(spec: str) -> None:
    config = json.loads(spec)
    supervisor = Supervisor(config["commands"], config["cwd"], write_line)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    supervisor.run()
    write_line("RIS stopped")


if __name__ == "__main__":
    main(sys.argv[-1])
