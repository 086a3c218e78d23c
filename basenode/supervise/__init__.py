"""Supervise: PID-1 duties and a small process supervisor in one single-threaded event loop.

Its modules, one job each: `loop` (the Supervisor and its event loop), `process` (one program's
record and states), `table` (the records the parts share), `lifecycle` (start, up, ready, exit,
restart), `policy` (backoff and depends_on, pure), `changes` (signal, restart, reload asked from
outside), `stop` (the ordered stop and the exit status), `spawn` (a program's process and its
signals), `pid1` (signal dispositions, subreaper), `output` (children's output multiplexed).

One loop waits in `selectors` on a self-pipe that `signal.set_wakeup_fd` writes a byte to for every
signal, and on every child's stdout/stderr pipe; timers (restart backoff, startsecs, stop timeouts,
readiness checks) become the select timeout. After every wakeup it reaps with
`waitpid(-1, WNOHANG)` until nothing is left, so no SIGCHLD is lost and orphans re-parented to us
(we are PID 1, or a child subreaper when we are not) never stay zombies longer than one cycle.

Semantics the rest of basenode and its users rely on:

- Start order: config order, except that a program waits until every program in its `depends_on`
  is up (running for `startsecs`, and its readiness condition holds when it has one: ready_file,
  ready_tcp, ready_http or ready_command, checked without blocking by ready.py) or has finished with
  status 0 (a one-shot task). A program whose dependency is FATAL, unknown or part of a cycle goes
  FATAL itself instead of waiting forever.
- A program that exits before it has run `startsecs` is a failed start, whatever its autorestart
  says (as in supervisord), unless it exited 0 and autorestart is not `always` (then it is simply
  done). Failed starts are retried with backoff; the `startretries`-th failed start in a row (at
  least the first when startretries <= 1) is FATAL. A program that was up and exits is restarted
  when autorestart is `always`, or `on-failure` and it exited non-zero or was killed by a signal.
- Restart delay: `backoff_initial` doubling per restart in a row up to `backoff_max`, minus up to
  20 % jitter (programs that crash together do not restart in lockstep); 0 restarts at once. The
  streak starts again once a run lasted at least `backoff_max`.
- Process groups: each program runs in its own session and process group. Its stop signal, and any
  forwarded signal, goes to its pid only, as tini does without -g: the program decides how to pass
  it on (a shell script to its job, HAProxy's master to its workers), and a group-wide signal would
  hit those children twice. SIGKILL after the stop timeout goes to the whole group, and processes
  left in a program's groups after it exited get its stop signal, then SIGKILL, so nothing it
  started outlives basenode (short of a daemon that made a session of its own; in a PID
  namespace the kernel ends those too when basenode, its PID 1, exits). Its own session also
  keeps the terminal's Ctrl-C away from the children: only basenode gets it, and it stops
  everything once. Its stdin is basenode's, the others get /dev/null. The exception is a main
  program whose output is `inherit` while basenode's stdin is a terminal: it runs in a process
  group of its own inside basenode's session, made the terminal's foreground group, as tini does
  (see terminal.py), so Ctrl-C and an interactive shell's job control are the application's.
- Stop (SIGTERM, SIGINT, SIGQUIT; the main program's exit; a required program's FATAL; every
  program finished): programs are stopped one by one in reverse start order, each with its
  stop_signal and SIGKILL after its stop_timeout; every one still alive when the longest stop
  timeout has passed since the stop began is killed, so basenode returns within that plus
  KILL_GRACE (it gives up on what SIGKILL could not remove, e.g. a zombie whose parent is not
  basenode). A second stop signal during a stop is ignored. Programs do not restart during a stop.
- Exit status: 1 when a required program (or the main program) went FATAL; else the main
  program's status (128+N when killed by signal N) if it ran; else 128+N for the stop signal N
  (143 for SIGTERM, as docker expects); else 0 (every program finished). A main program that
  cannot be executed gives 127 (not found) or 126 (not executable), as a shell would.
- Children start with default signal dispositions and an empty signal mask: basenode runs with an
  empty mask, signals it catches revert to the default on exec, signals it inherited as ignored
  get a no-op handler for the same reason, and Popen's restore_signals resets SIGPIPE/SIGXFSZ.
- Output: every line of a child's stdout/stderr goes to basenode's stdout/stderr as
  `NAME | line` (or a JSON log object); lines longer than 64 KiB are split, a partial last line is
  flushed at EOF, bytes are copied as they are (binary included). A program whose `output` is
  `inherit` writes to basenode's stdout/stderr itself: its bytes pass untouched.

Only the standard library is imported by this package: basenode as PID 1 must stay small.
"""

from .loop import Supervisor, supervise
from .process import ProgramState

__all__ = ["ProgramState", "Supervisor", "supervise"]
