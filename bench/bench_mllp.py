#!/usr/bin/env python3
"""MLLP ORM^O01 ingest (issue 3): our listener (`manage.py runmllp`, commit before ACK) against
a do-nothing MLLP echo server (the floor), with independent plain-socket senders.

Each sender is its own process: one connection, N distinct ORM^O01 (NW) messages sent one at
a time, each timed from send to the end of its ACK. Reported per setup: messages/s over the
whole run, p50 and p99 ACK latency, and the ratio to the echo floor on the same machine.
Setups: SQLite on 1 connection; PostgreSQL on 4 connections (when reachable). Two echo
floors, one threaded and one asyncio, show what the threading model itself costs.

Run alone: `.venv/bin/python bench/bench_mllp.py [--quick]`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time

import common

ROOT, PY = common.ROOT, common.PY
VT, FS_CR = b"\x0b", b"\x1c\x0d"


# --- the independent sender (a subprocess per connection) ---------------------------------------


def orm(n: int, run: str) -> bytes:
    """An ORM^O01 NW as a v2.3.1 sender writes it, with a ZDS-less OBR (the RIS assigns UIDs)."""
    obr = ["OBR", "1", f"PL{run}{n}^HIS", "", "^^^P1^CT head^LOCAL"] + [""] * 13 + [f"B{run}{n}"]
    obr += ["", "", "", "", "", "CT"]
    return (
        "\r".join(
            [
                f"MSH|^~\\&|BENCH|HOSP|RIS|RAD|20261126101500||ORM^O01|{run}{n}|P|2.3.1||||||8859/1",
                f"PID|||P{run}{n % 500}^^^HOSP||Bench^Patient{n % 500}||19700101|F",
                "PV1||O|||||^Referrer^Anna",
                f"ORC|NW|PL{run}{n}^HIS|||SC||^^^20261127090000^^R|||||||||||CT01",
                "|".join(obr),
            ]
        ).encode("latin-1")
        + b"\r"
    )


def send_many(port: int, count: int, run: str) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies, buffer = [], b""
    for n in range(count):
        started = time.perf_counter()
        sock.sendall(VT + orm(n, run) + FS_CR)
        while FS_CR not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("listener closed the connection")
            buffer += chunk
        ack, _, buffer = buffer.partition(FS_CR)
        latencies.append(time.perf_counter() - started)
        if b"MSA|AA|" not in ack:
            raise RuntimeError(f"message {n} not accepted: {ack[:300]!r}")
    sock.close()
    return latencies


# --- the floor: do-nothing MLLP echo servers ----------------------------------------------------


def canned_ack(frame: bytes) -> bytes:
    control_id = frame.split(b"\r", 1)[0].split(b"|")[9] if frame.count(b"|") > 9 else b""
    return VT + b"MSH|^~\\&|ECHO|X|A|B|20260101||ACK^O01^ACK|1|P|2.3.1\rMSA|AA|" + control_id + b"\r" + FS_CR


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while data := self.request.recv(65536):
            buffer += data
            while FS_CR in buffer:
                frame, _, buffer = buffer.partition(FS_CR)
                self.request.sendall(canned_ack(frame.lstrip(VT)))


def serve_threaded_echo(port: int) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    server.serve_forever()


def serve_asyncio_echo(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                frame = await reader.readuntil(FS_CR)
                writer.write(canned_ack(frame.lstrip(VT)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- orchestration -------------------------------------------------------------------------------


def base36(n: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def measure(port: int, connections: int, count: int) -> dict:
    """Start `connections` sender processes at once; wall time from first start to last finish."""
    run = base36(int(time.time() * 1000) % 36**6)  # short: accession numbers are at most 16 characters
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [PY, __file__, "--send", str(port), str(count), f"{run}{i}X"],
            stdout=subprocess.PIPE,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        for i in range(connections)
    ]
    latencies: list[float] = []
    sender_cpu = 0.0
    for sender in senders:
        out, _ = sender.communicate(timeout=1800)
        if sender.returncode != 0:
            raise RuntimeError(f"sender failed with {sender.returncode}")
        report = json.loads(out)
        latencies += report["latencies"]
        sender_cpu += report["cpu"]
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "messages": len(latencies),
        "rate": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "sender_cpu": sender_cpu,
    }


def echo_floor(kind: str, connections: int, count: int) -> dict:
    port = common.free_port()
    process = common.start([PY, __file__, f"--echo-{kind}", str(port)])
    try:
        common.wait_port(port, process)
        return measure(port, connections, count)
    finally:
        common.stop(process)


def ours(database_url: str, connections: int, count: int, env_extra: dict | None = None) -> dict:
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIS_")}
    env.update({"DATABASE_URL": database_url, "RIS_MLLP_PORT": str(port), "RIS_LOG_LEVEL": "WARNING"})
    env.update(env_extra or {})
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    process = common.start([PY, "manage.py", "runmllp"], env=env)
    try:
        common.wait_port(port, process)
        measure(port, 1, 20)  # warm-up: imports, first connection, caches
        before, db_before = common.cpu_seconds(process.pid, tree=True), common.postgres_cpu_seconds()
        result = measure(port, connections, count)
        # The listener's own CPU per message (all its processes): what one otherwise idle core sustains.
        result["cpu_ms"] = (common.cpu_seconds(process.pid, tree=True) - before) / result["messages"] * 1000
        if database_url.startswith("postgres") and db_before is not None:
            time.sleep(0.5)  # backends of closed connections exit and are reaped into the postmaster's total
            result["db_cpu_ms"] = (common.postgres_cpu_seconds() - db_before) / result["messages"] * 1000
    finally:
        common.stop(process)
    return result


def row(label: str, target: str, r: dict, floor: dict) -> str:
    db = f"{r['db_cpu_ms']:.1f}" if "db_cpu_ms" in r else "-"
    return (
        f"| {label} | {r['messages']} | {r['rate']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['cpu_ms']:.1f} | {db} | {floor['rate']:.0f} | {r['rate'] / floor['rate']:.2f} | {target} |"
    )


def run(quick: bool = False) -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")
    count = 300 if quick else 2000
    floors = {(kind, conns): echo_floor(kind, conns, count) for kind in ("threads", "asyncio") for conns in (1, 4)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mllp-") as tmp:
        sqlite = ours(f"sqlite:///{tmp}/bench.sqlite3", 1, count)
        rows.append(row("ours, SQLite, 1 connection", "≥ 300 msg/s, p99 ≤ 50 ms", sqlite, floors[("threads", 1)]))
    pg = common.create_postgres("bench_mllp")
    if pg is not None:
        cores, url = os.cpu_count() or 1, common.postgres_url(pg)
        try:
            result = ours(url, 4, count)
            rows.append(
                row("ours, PostgreSQL, 4 connections", "≥ 600 msg/s, p99 ≤ 50 ms", result, floors[("threads", 4)])
            )
            if cores > 1:
                procs = {"RIS_MLLP_PROCESSES": str(cores)}
                result = ours(url, 4, count, procs)
                label = f"ours, PostgreSQL, 4 connections, {cores} processes"
                rows.append(row(label, "≥ 600 msg/s, p99 ≤ 50 ms", result, floors[("threads", 4)]))
            result = ours(url, 1, count)
            rows.append(row("ours, PostgreSQL, 1 connection", "-", result, floors[("threads", 1)]))
        finally:
            common.drop_postgres(pg)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    floor_rows = [
        f"| echo, {kind}, {conns} connection{'s' if conns > 1 else ''} | {r['messages']} | {r['rate']:.0f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        for (kind, conns), r in floors.items()
    ]
    return "\n".join(
        [
            "## HL7 MLLP inbound: ORM^O01 ingest (bench_mllp)",
            "",
            f"{count} ORM^O01 (NW) messages per connection, each a new order with one exam and one worklist step; "
            "every ACK is sent after the order, the journal row and its outcome are committed. Senders are "
            "independent plain-socket processes (TCP_NODELAY), one message in flight per connection. "
            "Ratio = our messages/s ÷ the do-nothing threaded echo server's with the same connections. "
            f"Load average at the end of the run (1/5/15 min): {load} on {os.cpu_count()} cores. "
            "Listener CPU ms/msg is the listener's own CPU time (user + system, all its processes) per "
            "message: 1000 / that is what one otherwise idle core sustains, whatever else the machine runs "
            "(the database server's CPU is not included). Database CPU ms/msg is the local PostgreSQL "
            "server's CPU per message (SQLite works inside the listener). Listener + database CPU per "
            "message bounds the rate: cores * 1000 / (their sum) msg/s on a machine doing nothing else.",
            "",
            "| setup | messages | msg/s | p50 ms | p99 ms | listener CPU ms/msg | database CPU ms/msg | echo msg/s "
            "| ratio | target |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Floor: do-nothing MLLP echo servers (canned AA, no parsing, no database):",
            "",
            "| server | messages | msg/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
            *floor_rows,
            "",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--send":
        latencies = send_many(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        print(json.dumps({"latencies": latencies, "cpu": time.process_time()}))
    elif len(sys.argv) > 1 and sys.argv[1] == "--echo-threads":
        serve_threaded_echo(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--echo-asyncio":
        serve_asyncio_echo(int(sys.argv[2]))
    else:
        sys.path.insert(0, str(ROOT))
        print(run(quick="--quick" in sys.argv))
