"""Supervisor figures of issue 2: basenode against supervisord, tini and the bare interpreter.

Four tables, all from the same run on the same machine:
1. resident memory while supervising 10 idle programs (plus rows that show where basenode's goes);
2. graceful stop of those 10 programs, timed on the same runs;
3. crash-to-restart time with no backoff (start-to-start interval of a program that exits at once);
4. start time of `basenode version`, cold (fresh shiv extraction) and warm.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from bench import common
from bench.common import Context, Processes, Section, Table, clean_env, fmt, median, pct, ratio
from tests.support.waiting import eventually

TITLE = "Supervisor: basenode as PID 1 (issue 2)"

IDLE_PROGRAMS = 10
IDLE_COMMAND = ("sleep", "1000000")
SUPERVISORD = "/usr/bin/supervisord"
MIB = 1024.0
RESTART_CAP = 30.0  # seconds per subject: supervisord restarts about once a second
LEAN_NAME = "basenode without shiv's bootstrap (experiment)"
SETTLE = 1.2  # seconds after all programs are up: past startsecs (1 s), all RUNNING
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Roots:
    """Shiv extraction roots, extracted before anything is measured."""

    warm: Path  # .pyc files written next to the sources, as on any writable file system
    no_pyc: Path  # extracted and run with PYTHONDONTWRITEBYTECODE=1, as many Dockerfiles set it


def extract(ctx: Context) -> Roots:
    roots = Roots(ctx.scratch / "shiv-warm", ctx.scratch / "shiv-no-pyc")
    for root, extra in ((roots.warm, {}), (roots.no_pyc, NO_PYC)):
        subprocess.run(
            [ctx.python, str(ctx.zipapp), "version"],
            env=clean_env(SHIV_ROOT=str(root), **extra),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return roots


def run(ctx: Context) -> Section:
    roots = extract(ctx)
    tables = []
    for measure in (memory_tables, restart_table, startup_table):
        t0 = time.monotonic()
        made = measure(ctx, roots)
        tables += made if isinstance(made, tuple) else [made]
        print(f"({measure.__name__}: {time.monotonic() - t0:.0f} s)", flush=True)
    method = (
        f"basenode runs as `{ctx.python} {_rel(ctx.zipapp)} run --no-consul --no-haproxy --config FILE`, "
        "from an already extracted shiv cache unless the row says cold; supervisord is Debian's "
        f"`{SUPERVISORD} -n -c FILE` (it runs on /usr/bin/python3).",
        "Each subject runs alone, one after the other (the memory runs interleaved round by round, so "
        "that drift on the machine hits all subjects alike); every process started is stopped, "
        "descendants included, before the next starts.",
    )
    summary = tuple(note for table in tables for note in table.notes if note.startswith("Target"))
    return Section(TITLE, tuple(tables), method, summary)


# --- subjects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    name: str
    argv: Tuple[str, ...]
    env: Mapping[str, str]
    programs: int  # children that must be running before we measure


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(common.ROOT))
    except ValueError:
        return str(path)


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def basenode_subject(
    ctx: Context,
    workdir: Path,
    programs: Mapping[str, Mapping[str, object]],
    shiv_root: Path,
    name: str = "basenode",
    extra_env: Optional[Mapping[str, str]] = None,
    launcher: Optional[Sequence[str]] = None,  # what runs `basenode ...`; default: python + zipapp
) -> Subject:
    """basenode supervising `programs` ({name: {key: value}}) from a TOML file, nothing else."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    for program, keys in programs.items():
        lines.append(f"[programs.{program}]")
        for key, value in keys.items():
            text = _toml_list(value) if isinstance(value, (list, tuple)) else json.dumps(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    conf = workdir / "basenode.toml"
    conf.write_text("\n".join(lines))
    argv = (
        *(launcher or (ctx.python, str(ctx.zipapp))),
        "run",
        "--no-consul",
        "--no-haproxy",
        "--config",
        str(conf),
        "--state-dir",
        str(workdir / "state"),
        # other work may run on this machine: never take the default status port
        "--status-addr",
        f"127.0.0.1:{common.free_port()}",
    )
    return Subject(name, argv, clean_env(SHIV_ROOT=str(shiv_root), **(extra_env or {})), len(programs))


def supervisord_subject(workdir: Path, programs: Mapping[str, Mapping[str, object]]) -> Subject:
    """Debian's supervisord in the foreground, logging to stdout as containers run it."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={workdir / 'supervisord.log'}",
        f"pidfile={workdir / 'supervisord.pid'}",
        f"childlogdir={workdir}",
        "",
    ]
    for name, keys in programs.items():
        lines.append(f"[program:{name}]")
        lines += [f"{key}={value}" for key, value in keys.items()]
        lines += ["stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0", "redirect_stderr=true", ""]
    conf = workdir / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return Subject("supervisord", (SUPERVISORD, "-n", "-c", str(conf)), clean_env(), len(programs))


# --- 1. memory ----------------------------------------------------------------------------------


def memory_subjects(ctx: Context, roots: Roots) -> List[Subject]:
    base = ctx.scratch / "memory"
    idle = {f"p{i}": {"command": list(IDLE_COMMAND)} for i in range(IDLE_PROGRAMS)}
    sv_idle = {f"p{i}": {"command": " ".join(IDLE_COMMAND)} for i in range(IDLE_PROGRAMS)}
    # basenode's modules straight from the extracted site-packages, without shiv's bootstrap
    # (which imports zipfile, hashlib with OpenSSL's libcrypto, compileall): what a zipapp
    # entry point that skips the bootstrap once the archive is extracted would cost.
    site_packages = next(roots.warm.glob("*/site-packages"))
    lean = (
        ctx.python,
        "-c",
        f"import sys; sys.path.insert(0, {str(site_packages)!r}); sys.argv[0] = 'basenode'; "
        "from basenode.cli import main; sys.exit(main())",
    )
    return [
        basenode_subject(ctx, base / "basenode", idle, roots.warm),
        basenode_subject(
            ctx, base / "no-pyc", idle, roots.no_pyc, "basenode, PYTHONDONTWRITEBYTECODE=1", NO_PYC
        ),
        basenode_subject(ctx, base / "lean", idle, roots.warm, LEAN_NAME, launcher=lean),
        supervisord_subject(base / "supervisord", sv_idle),
        Subject("tini", ("tini", "-s", "--", *IDLE_COMMAND), clean_env(), 1),
        Subject(
            "python3 (interpreter only)", (ctx.python, "-c", "import time; time.sleep(1000)"), clean_env(), 0
        ),
    ]


@dataclass(frozen=True)
class IdleSample:
    memory: common.Memory
    stop_s: Optional[float]  # SIGTERM to exit; None if it had to be killed


def measure_idle(procs: Processes, subject: Subject, log: Path, settle: float) -> IdleSample:
    """Start `subject`, wait for its programs and `settle` seconds, read its memory, stop it."""
    proc = procs.start(subject.argv, subject.env, log)
    try:

        def all_running() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{subject.name} exited with {proc.returncode}; see {log}")
            kids = procs.remember_descendants(proc)
            return sum(common.comm(pid) == IDLE_COMMAND[0] for pid in kids) >= subject.programs

        eventually(
            all_running,
            timeout=30,
            interval=0.01,
            what=f"{subject.name}: {subject.programs} programs running",
        )
        time.sleep(settle)
        all_running()
        memory = common.memory_of(proc.pid)
    except BaseException:
        procs.stop(proc)
        raise
    return IdleSample(memory, procs.stop(proc))


def memory_tables(ctx: Context, roots: Roots) -> Tuple[Table, Table]:
    subjects = memory_subjects(ctx, roots)
    rounds = ctx.reps(5, 1)
    samples: Dict[str, List[IdleSample]] = {s.name: [] for s in subjects}
    with Processes() as procs:
        # Not counted: the first `run` writes .pyc files for the modules it imports, as the
        # first start of a container would.
        measure_idle(procs, subjects[0], ctx.scratch / "memory" / "warm-up.log", 0)
        for _ in range(rounds):
            for n, s in enumerate(subjects):
                settle = SETTLE if s.programs > 1 else 0.5
                samples[s.name].append(measure_idle(procs, s, ctx.scratch / "memory" / f"{n}.log", settle))
    return memory_table(subjects, samples, rounds), stop_table(subjects, samples, rounds)


def memory_table(
    subjects: Sequence[Subject], samples: Mapping[str, Sequence[IdleSample]], rounds: int
) -> Table:
    def mib(values: Sequence[Optional[int]]) -> List[float]:
        return [v / MIB for v in values if v is not None]

    ref = median(mib([x.memory.rss_kb for x in samples["basenode"]]))
    rows = []
    for s in subjects:
        rss = mib([x.memory.rss_kb for x in samples[s.name]])
        pss = mib([x.memory.pss_kb for x in samples[s.name]])
        uss = mib([x.memory.uss_kb for x in samples[s.name]])
        rows.append(
            (
                s.name,
                str(s.programs),
                fmt(median(rss)),
                f"{fmt(min(rss))}-{fmt(max(rss))}",
                fmt(median(pss)) if pss else "-",
                fmt(median(uss)) if uss else "-",
                ratio(median(rss), ref),
            )
        )
    target = "met" if ref <= 22.0 else "MISSED"
    return Table(
        f"Resident memory of the supervising process, {IDLE_PROGRAMS} idle programs "
        f"(MiB, median of {rounds})",
        ("subject", "programs", "RSS p50", "RSS range", "PSS p50", "USS p50", "RSS vs basenode"),
        tuple(rows),
        (
            "The supervising process alone, read from /proc/PID/status (VmRSS) and /proc/PID/smaps_rollup "
            "(Pss; USS = Private_Clean + Private_Dirty, what the process alone adds); its children (`sleep`) "
            "cost the same under every supervisor and are not counted. PSS shares pages among every "
            "process that maps them, so it also depends on what else runs on the machine.",
            f"Read once all programs run plus {SETTLE:g} s (past startsecs, 1 s in both supervisors; 0.5 s "
            "for tini and the interpreter). tini runs one program (`tini -s -- sleep 1000000`): the floor. "
            "The interpreter row is `python3 -c 'import time; time.sleep(1000)'`, the same interpreter "
            "as basenode.",
            "PYTHONDONTWRITEBYTECODE=1 (common in Dockerfiles): no .pyc is ever written in the extraction "
            "root, so basenode compiles its modules at every start; the compiler's memory stays in the RSS.",
            "The experiment row runs the same basenode modules from the extracted site-packages with "
            "`python3 -c 'sys.path.insert(0, SITE_PACKAGES); from basenode.cli import main; ...'`: no shiv "
            "bootstrap, which imports zipfile, hashlib (OpenSSL's libcrypto) and compileall only to find "
            "or make the extraction. The difference to the first row is what a zipapp entry point that "
            "skips the bootstrap once the archive is extracted would save.",
            f"Target (issue 2): basenode <= 22 MiB RSS with {IDLE_PROGRAMS} programs: {target} "
            f"({fmt(ref)} MiB).",
        ),
    )


def stop_table(
    subjects: Sequence[Subject], samples: Mapping[str, Sequence[IdleSample]], rounds: int
) -> Table:
    ref = median([x.stop_s * 1000 for x in samples["basenode"] if x.stop_s is not None])
    rows = []
    for s in subjects:
        took = [x.stop_s * 1000 for x in samples[s.name] if x.stop_s is not None]
        killed = sum(x.stop_s is None for x in samples[s.name])
        rows.append(
            (
                s.name,
                str(s.programs),
                pct(took, 50),
                f"{fmt(min(took))}-{fmt(max(took))}" if took else "-",
                str(killed),
                ratio(median(took), ref) if took else "-",
            )
        )
    return Table(
        f"Graceful stop: SIGTERM to the supervising process until it has exited (ms, median of {rounds})",
        ("subject", "programs", "p50", "range", "killed", "p50 vs basenode"),
        tuple(rows),
        (
            "Same runs as the memory table, measured when each is stopped: every program is `sleep`, which "
            "dies at once on SIGTERM, so this is the supervisor's own stop path. `killed` counts runs that "
            "were still alive 20 s after SIGTERM. supervisord stops one program group per turn of its "
            "main loop (each `[program:x]` is a group of its own), and a turn can wait up to 1 s.",
        ),
    )


# --- 2. crash to restart ------------------------------------------------------------------------


def _crash_command(starts: Path) -> Tuple[str, ...]:
    # bash's $EPOCHREALTIME is a builtin: the timestamp costs no fork of its own.
    return ("bash", "-c", f"echo $EPOCHREALTIME >> {shlex.quote(str(starts))}; exit 1")


def _read_starts(path: Path) -> List[float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [float(x) for x in text.split()[:-1]]  # the last line may be half written


def _intervals_ms(starts: Sequence[float]) -> List[float]:
    return [(b - a) * 1000.0 for a, b in zip(starts, starts[1:])]


def collect_restarts(
    procs: Processes, subject: Subject, starts: Path, wanted: int, cap: float
) -> List[float]:
    """Start-to-start intervals (ms) until `wanted` restarts were seen or `cap` seconds passed."""
    log = starts.with_suffix(".log")
    proc = procs.start(subject.argv, subject.env, log)
    try:
        deadline = time.monotonic() + cap
        while len(_read_starts(starts)) < wanted + 2 and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{subject.name} exited with {proc.returncode}; see {log}")
            procs.remember_descendants(proc)
            time.sleep(0.05)
    finally:
        procs.stop(proc)
    return _intervals_ms(_read_starts(starts))[:wanted]


def floor_intervals(procs: Processes, starts: Path, wanted: int) -> List[float]:
    """The same program started back to back by a bash loop: fork, exec, exit, wait and nothing else."""
    inner = shlex.join(_crash_command(starts))
    loop = f"for i in $(seq {wanted + 2}); do {inner}; done"
    proc = procs.start(("bash", "-c", loop), clean_env(), starts.with_suffix(".log"))
    proc.wait(120)
    procs.stop(proc)
    return _intervals_ms(_read_starts(starts))[:wanted]


FLOOR = "bash loop, no supervisor (reference)"


def restart_table(ctx: Context, roots: Roots) -> Table:
    base = ctx.scratch / "restart"
    wanted = ctx.reps(200, 20)
    results: Dict[str, List[float]] = {}
    with Processes() as procs:
        starts = base / "floor" / "starts"
        starts.parent.mkdir(parents=True, exist_ok=True)
        results[FLOOR] = floor_intervals(procs, starts, wanted)

        starts = base / "basenode" / "starts"
        program = {
            "command": list(_crash_command(starts)),
            "autorestart": "always",
            "startsecs": 0,
            "startretries": 1000000,
            "backoff_initial": 0,
            "backoff_max": 0,
        }
        subject = basenode_subject(ctx, starts.parent, {"crash": program}, roots.warm)
        results["basenode"] = collect_restarts(procs, subject, starts, wanted, ctx.reps(RESTART_CAP, 10))

        starts = base / "supervisord" / "starts"
        program = {
            "command": shlex.join(_crash_command(starts)),
            "autorestart": "true",
            "startsecs": "0",
            "startretries": "1000000",
        }
        subject = supervisord_subject(starts.parent, {"crash": program})
        cap = ctx.reps(RESTART_CAP, 10)
        results["supervisord"] = collect_restarts(procs, subject, starts, wanted, cap)

    ref = median(results["basenode"])
    rows = tuple(
        (
            name,
            str(len(v)),
            pct(v, 50, 2),
            pct(v, 90, 2, min_samples=10),
            pct(v, 99, 2, min_samples=100),
            fmt(max(v), 2) if v else "-",
            ratio(median(v), ref),
        )
        for name, v in results.items()
    )
    target = "met" if ref < 50.0 else "MISSED"
    return Table(
        "Crash to restart, backoff 0: interval between consecutive starts of a program that exits 1 "
        "at once (ms)",
        ("supervisor", "restarts", "p50", "p90", "p99", "max", "p50 vs basenode"),
        rows,
        (
            "The program is `bash -c 'echo $EPOCHREALTIME >> FILE; exit 1'`; it writes its own start "
            "time, so an interval is: bash's exit, the supervisor noticing it (SIGCHLD/reap), deciding "
            "to restart, fork+exec of the next bash and bash's start-up until the echo. Nothing is "
            "subtracted.",
            "The reference row is the same command run back to back by a bash loop. It is no hard floor: "
            "bash starts each child with fork(), Python's subprocess with vfork(), which is cheaper.",
            'basenode: `autorestart = "always"`, `startsecs = 0`, `startretries = 1000000`, '
            "`backoff_initial = 0`, `backoff_max = 0`. supervisord: `autorestart=true`, `startsecs=0`, "
            "`startretries=1000000` (supervisord has no backoff setting; with startsecs=0 it never "
            "backs off).",
            f"Up to {wanted} restarts per subject, capped at {ctx.reps(RESTART_CAP, 10)} s each; the count "
            "column says how many were seen. supervisord's main loop waits up to 1 s in poll() and "
            "reaps after it has run the restart step, so a crash is restarted one wake-up later (its "
            "intervals sit at 1 s and 2 s) and it gets fewer restarts in the time `make bench` can spend. "
            "p99 only from 100 samples up.",
            f"Target (issue 2): basenode restart < 50 ms: {target} (p50 {fmt(ref, 2)} ms).",
        ),
    )


# --- 3. start time ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    name: str
    argv: Tuple[str, ...]
    env: Mapping[str, str]
    prepare: Optional[Tuple[str, ...]] = None  # runs before every timed run, untimed
    warmup: int = 3


def time_runs(item: Timed, runs: int, scratch: Path, index: int) -> List[float]:
    """Wall times (ms) of `runs` runs: hyperfine when installed, else a plain loop."""
    hyperfine = shutil.which("hyperfine")
    if hyperfine:
        out = scratch / f"hyperfine-{index}.json"
        argv = [hyperfine, "-N", "--style", "none", "--runs", str(runs), "--export-json", str(out)]
        argv += ["--warmup", str(item.warmup)] if item.warmup else []
        argv += ["--prepare", shlex.join(item.prepare)] if item.prepare else []
        argv.append(shlex.join(item.argv))
        done = subprocess.run(argv, env=dict(item.env), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"hyperfine failed for {item.name}: {done.stderr.strip()}")
        return [t * 1000.0 for t in json.loads(out.read_text())["results"][0]["times"]]
    return _loop_times(item, runs)


def _loop_times(item: Timed, runs: int) -> List[float]:
    def once() -> float:
        if item.prepare:
            subprocess.run(item.prepare, env=dict(item.env), check=True)
        t0 = time.perf_counter()
        subprocess.run(item.argv, env=dict(item.env), check=True, stdout=subprocess.DEVNULL)
        return (time.perf_counter() - t0) * 1000.0

    for _ in range(item.warmup):
        once()
    return [once() for _ in range(runs)]


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def startup_items(ctx: Context, roots: Roots) -> List[Timed]:
    cold_root = ctx.scratch / "shiv-cold"
    zipapp = str(ctx.zipapp)
    path_python = shutil.which("python3") or "?"
    if _is_script(path_python):
        path_python += ", a script that execs an interpreter (e.g. a pyenv shim)"
    items = [
        Timed("python3 -c pass (the interpreter floor)", (ctx.python, "-c", "pass"), clean_env()),
        Timed(
            "basenode version, warm",
            (ctx.python, zipapp, "version"),
            clean_env(SHIV_ROOT=str(roots.warm)),
        ),
        Timed(
            "basenode version, warm, PYTHONDONTWRITEBYTECODE=1",
            (ctx.python, zipapp, "version"),
            clean_env(SHIV_ROOT=str(roots.no_pyc), **NO_PYC),
        ),
        Timed(
            "basenode version, cold (fresh extraction)",
            (ctx.python, zipapp, "version"),
            clean_env(SHIV_ROOT=str(cold_root)),
            prepare=("rm", "-rf", str(cold_root)),
            warmup=0,
        ),
        Timed(
            f"dist/basenode version, warm, via its shebang (python3 on PATH: {path_python})",
            (zipapp, "version"),
            clean_env(SHIV_ROOT=str(roots.warm)),
        ),
        Timed("supervisord --version", (SUPERVISORD, "--version"), clean_env()),
        Timed("tini --version", ("tini", "--version"), clean_env()),
    ]
    return items


def startup_table(ctx: Context, roots: Roots) -> Table:
    runs = ctx.reps(20, 5)
    items = startup_items(ctx, roots)
    times = {item.name: time_runs(item, runs, ctx.scratch, i) for i, item in enumerate(items)}
    floor = median(times[items[0].name])
    warm = median(times["basenode version, warm"])
    rows = tuple(
        (
            name,
            str(len(v)),
            pct(v, 50),
            pct(v, 90, min_samples=10),
            fmt(min(v)),
            ratio(median(v), floor),
        )
        for name, v in times.items()
    )
    target = "met" if warm < 150.0 else "MISSED"
    tool = "hyperfine -N (no shell)" if shutil.which("hyperfine") else "a timing loop"
    return Table(
        f"Start time: fork+exec to exit, {runs} runs each (ms)",
        ("command", "runs", "p50", "p90", "min", "p50 vs python3 -c pass"),
        rows,
        (
            f"Wall time of the whole process measured by {tool}; 3 untimed warm-up runs before each "
            "warm row. Cold: SHIV_ROOT is removed before every run, so each run extracts the archive "
            "and compiles the modules it imports; warm: the extraction and .pyc files of earlier runs "
            "are reused (with PYTHONDONTWRITEBYTECODE=1 there are no .pyc files to reuse).",
            f"Rows without a path run `{ctx.python}` explicitly; the shebang row runs `dist/basenode` "
            "as a user would, through `#!/usr/bin/env python3` and whatever PATH finds first.",
            f"Target (issue 2): warm start < 150 ms: {target} (p50 {fmt(warm)} ms).",
        ),
    )
