"""Runs the benchmark families side by side and writes docs/benchmarks.md.

    .venv/bin/python bench/run.py --out docs/benchmarks.md      (what `make bench` runs)
    .venv/bin/python bench/run.py --only supervisor --quick     (a smoke run of the harness)
    .venv/bin/python bench/run.py --only templates --out docs/benchmarks.md   (one family again)

A family is a module bench/NAME.py with `TITLE: str` and `run(ctx: common.Context) -> common.Section`;
add NAME to FAMILIES to have it measured and written in the same run as the others. Inside, start
processes only through `common.Processes` (everything is stopped, descendants included, when its
`with` block ends), write files only under `ctx.scratch` (removed at the end), size repetitions
with `ctx.reps(full, quick)`, bind only loopback (`common.free_port()`), and return tables of
percentiles and ratios with notes that say what each figure includes.

Writing --out keeps the sections of the file that this run did not measure (a family left out with
--only, or one another command writes), each marked with the run it came from; the sections it did
measure are replaced in place.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(ROOT))

FAMILIES = (
    "supervisor",
    "discovery",
    "docker_cluster",
    "docker_drain",
    "templates",
    "kv_signal",
    "watch_scale",
    "floor",
    "dependencies",
    "cluster",
    "failover",
)
MAKE_BENCH = ".venv/bin/python bench/run.py --out docs/benchmarks.md"


def default_python() -> str:
    # The distribution's python3 is what a container image has, and what Debian's supervisord
    # runs on; measuring basenode on the same interpreter keeps the comparison fair.
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as Markdown to this file")
    parser.add_argument("--only", action="append", choices=FAMILIES, help="run only this family (repeatable)")
    parser.add_argument("--python", default=default_python(), help="interpreter that runs basenode")
    parser.add_argument("--zipapp", type=Path, default=ROOT / "dist" / "basenode")
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions: checks the harness, not figures"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench import common

    args = parse_args(argv)
    # A stopped harness still stops what it started: the `with Processes()` blocks run on exit.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if not args.zipapp.exists():
        print(f"bench: {args.zipapp} not found; run `make zipapp`", file=sys.stderr)
        return 2
    command = f"{_rel(sys.executable)} bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = common.load_average()
    measured_code = code_state()  # before the run: others may change the work tree meanwhile
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="basenode-bench-"))
    sections: List[common.Section] = []
    try:
        ctx = common.Context(
            python=args.python, zipapp=args.zipapp.resolve(), scratch=scratch, quick=args.quick
        )
        for name in args.only or FAMILIES:
            module = importlib.import_module(f"bench.{name}")
            print(f"== {module.TITLE}", flush=True)
            section = module.run(ctx)
            for table in section.tables:
                print(table.text(), flush=True)
            for line in section.summary:
                print(line)
            sections.append(section)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t0
    print(f"bench: done in {elapsed:.0f} s")
    if args.out:
        facts = (
            ("load average (1, 5, 15 min) at start", load_at_start),
            ("load average (1, 5, 15 min) at end", common.load_average()),
            *common.machine_facts(args.python),
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        default_zipapp = args.zipapp.resolve() == (ROOT / "dist" / "basenode").resolve()
        note = f"`dist/basenode`, built from {measured_code}" if default_zipapp else f"`{args.zipapp}`"
        text = render(command, note, started, elapsed, facts, sections, args.quick)
        args.out.write_text(kept_sections(args.out.read_text() if args.out.exists() else "", text))
        print(f"bench: wrote {args.out}")
    return 0


def split_sections(text: str) -> Tuple[str, Dict[str, str]]:
    """A generated document -> (everything before its first `## ` section, {title: section text})."""
    head, *parts = re.split(r"(?m)^(?=## )", text)
    return head, {part.splitlines()[0][3:].strip(): part.rstrip() + "\n" for part in parts}


def kept_sections(previous: str, text: str) -> str:
    """`text` plus every section of `previous` that `text` does not have, in the previous order.

    A kept section says which run measured it (that run's date and zipapp lines), once: kept again by
    a later run, it still names the run that measured it."""
    old_head, old = split_sections(previous)
    head, new = split_sections(text)
    provenance = "; ".join(
        [
            *(
                line[2:]
                for line in old_head.splitlines()
                if line.startswith(("- Date:", "- Zipapp measured:"))
            ),
            *machine_summary(old.get("Machine", "")),
        ]
    )
    merged = []
    for title in [*old, *(t for t in new if t not in old)]:
        if title in new:
            merged.append(new[title])
            continue
        section = old[title]
        # A section written by a tool of its own (make soak) names its run itself: no note for it.
        own_run = re.search(r"(?m)^Command: `", section) is not None
        if KEPT_MARK not in section and provenance and not own_run:
            heading, _, rest = section.partition("\n")
            section = f"{heading}\n\n{KEPT_MARK} ({provenance}).*\n{rest.rstrip()}\n"
        merged.append(section)
    return head + "\n".join(merged)


def machine_summary(section: str) -> List[str]:
    """The rows of a Machine table that tell one machine and its load from another, as `fact: value`."""
    wanted = ("CPUs (nproc)", "CPU model", "load average (1, 5, 15 min) at start")
    rows = (line.strip("|").split("|") for line in section.splitlines() if line.startswith("| "))
    return [f"{k.strip()}: {v.strip()}" for k, v, *_ in rows if k.strip() in wanted]


KEPT_MARK = "*Not measured by the run above: kept from an earlier run"


def _rel(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def code_state() -> str:
    """The commit and whether basenode's sources differ from it: the zipapp is built from the work tree."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "basenode", "templates", "scripts")
    return f"commit {commit}" + (
        " plus uncommitted changes in basenode/, templates/ or scripts/" if dirty else ""
    )


def render(
    command: str,
    zipapp_note: str,
    started: datetime.datetime,
    elapsed: float,
    facts: Sequence[tuple],
    sections: Sequence[object],
    quick: bool,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by the benchmark harness; do not edit by hand. Every figure below comes from one run "
        "on one machine, side by side: compare rows and ratios, not the absolute numbers of another machine.",
        "",
        f"- Command: `make bench`, which runs `{command}`"
        if command == MAKE_BENCH
        else f"- Command: `{command}` (`make bench` runs `{MAKE_BENCH}`)",
        f"- Zipapp measured: {zipapp_note}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC, took {elapsed:.0f} s",
    ]
    if quick:
        lines.append("- **Quick run** (--quick): too few repetitions to quote; run `make bench` for figures.")
    lines += ["", "## Machine", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.summary:
            lines += [f"- {line}" for line in section.summary] + [""]
        for paragraph in section.method:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [table.markdown()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
