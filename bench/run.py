#!/usr/bin/env python3
"""`make bench`: run every bench/bench_*.py and write docs/benchmarks.md.

Each benchmark module has `run(quick: bool) -> str`, returning a Markdown section (tables,
ratios ours/peer, links to plots it saved under docs/benchmarks/). Benchmarks run our stack
and the independent peer side by side in the same run; ratios are the headline, absolute
times are context. `--quick` makes every benchmark small enough for a smoke run;
`--only NAME` runs the named ones and replaces just their sections in the file (each section
follows a `<!-- bench:bench_x -->` line), so one benchmark can be rerun on its own;
`--output FILE` writes elsewhere (a smoke run that must not touch docs/benchmarks.md). Plots
go to docs/benchmarks/ either way.

The independent peers come from Debian packages, installed here when missing (as root, or
through `sudo -n`): DCMTK (findscu, storescu, wlmscpfs, storescp) and Orthanc, whose package
ships the ModalityWorklists plugin. A peer that cannot be installed is reported, and the
benchmarks that need it say they skipped it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ris.settings")


# Debian package -> the files that show it is installed.
PEER_PACKAGES = {
    "dcmtk": ["/usr/bin/findscu", "/usr/bin/storescu", "/usr/bin/wlmscpfs", "/usr/bin/storescp"],
    "orthanc": ["/usr/sbin/Orthanc", "/usr/share/orthanc/plugins/libModalityWorklists.so"],
}


def apt_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_peers() -> None:
    """Install the Debian packages of the peers that are missing (apt-get, non-interactive)."""
    missing = [pkg for pkg, files in PEER_PACKAGES.items() if not all(Path(f).exists() for f in files)]
    if not missing:
        return
    prefix = apt_prefix()
    if prefix is None or shutil.which("apt-get") is None:
        print(f"peers missing and not installable here (need root and apt-get): {' '.join(missing)}", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing peers from Debian: {' '.join(missing)}", flush=True)
    subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, check=False)
    result = subprocess.run([*prefix, "apt-get", "install", "-y", "-q", *missing], env=env, check=False)
    if result.returncode != 0:
        print(f"apt-get install {' '.join(missing)} failed ({result.returncode})", flush=True)


def first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: not installed"
    out = (result.stdout or result.stderr).strip()
    return out.splitlines()[0] if out else f"{argv[0]}: ?"


def machine() -> str:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    versions = [first_line(["findscu", "--version"]), first_line(["Orthanc", "--version"])]
    versions.append(first_line(["psql", "--version"]))
    rabbit = first_line(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"])
    versions.append(f"rabbitmq-server {rabbit}")
    packages = []
    for name in ("django", "pynetdicom", "pydicom", "celery"):
        try:
            from importlib.metadata import version

            packages.append(f"{name} {version(name)}")
        except Exception:
            packages.append(f"{name} ?")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"- {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB memory, {platform.platform()}\n"
        f"- Python {platform.python_version()}; " + "; ".join(packages) + "\n"
        "- Peers: " + "; ".join(versions) + "\n"
        f"- Load average at start: {load}"
    )


def marker(name: str) -> str:
    return f"<!-- bench:{name} -->\n"


def merge(existing: str, sections: dict[str, str]) -> str | None:
    """`existing` with the named modules' sections replaced (or appended); None when it has no
    section markers (written before they existed), so there is nothing to splice into."""
    parts = re.split(r"(?m)^<!-- bench:(\w+) -->\n", existing)
    if len(parts) == 1:
        return None
    named = dict(zip(parts[1::2], parts[2::2], strict=True))
    named.update(sections)
    return parts[0] + document_sections(named)


def document_sections(sections: dict[str, str]) -> str:
    """Each section after its marker line, a blank line between them."""
    return "\n".join(marker(name) + text.strip("\n") + "\n" for name, text in sections.items())


def provenance(name: str, section: str, quick: bool) -> str:
    """A section rerun alone says so under its heading: when, in which mode, under what load."""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    note = (
        f"*This section: `bench/run.py{' --quick' if quick else ''} --only {name.removeprefix('bench_')}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average at its end {load}; the header's "
        "machine line is from the last full run.*\n"
    )
    heading, _, rest = section.partition("\n")
    return f"{heading}\n\n{note}{rest}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the Markdown to write")
    args = parser.parse_args()
    if not args.no_install:
        ensure_peers()
    (ROOT / "docs" / "benchmarks").mkdir(parents=True, exist_ok=True)
    modules = sorted((ROOT / "bench").glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if any(name in m.stem for name in args.only)]
    sections: dict[str, str] = {}
    failed = []
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        started = time.monotonic()
        print(f"== {path.stem}", flush=True)
        try:
            sections[path.stem] = module.run(quick=args.quick).rstrip() + "\n\n"
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            print(f"   {path.stem} failed: {exc!r}", flush=True)
            failed.append(path.stem)
            sections[path.stem] = f"## {path.stem}\n\nFailed in this run: `{exc!r}`\n\n"
        print(f"   done in {time.monotonic() - started:.0f} s", flush=True)
    if not sections:
        print("no benchmark modules in bench/")
        return 1
    out = args.output.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only:
        rerun = {name: provenance(name, text, args.quick) for name, text in sections.items()}
        merged = merge(out.read_text(), rerun) if out.exists() else None
        if merged is None:
            print("".join(rerun.values()))
            print(f"{out} has no section markers to replace: sections printed above, file unchanged")
        else:
            out.write_text(merged)
            print(f"replaced {', '.join(rerun)} in {out}")
        return 1 if failed else 0
    header = (
        f"# Benchmarks\n\nGenerated by `make bench{'-quick' if args.quick else ''}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Ratios (ours/peer) are the headline; "
        f"absolute figures depend on the machine.\n\n## Machine\n\n{machine()}\n\n"
    )
    out.write_text(header + document_sections(sections))
    print(f"wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
