"""Start a parameter-server job (scheduler + servers + workers) on this machine.

Usage::

    python -m gluon_ssd.launch -n 2 -s 1 -- python train_ssd.py --kvstore dist_sync ...

Options: ``-n/--num-workers`` (>= 1), ``-s/--num-servers`` (>= 1), ``--host`` (address everything
binds to and connects to, default ``127.0.0.1``), ``--port`` (scheduler port, default
``$DMLC_PS_ROOT_PORT`` if set, else a free one; a port already in use is a one-line error, exit 2),
``--timeout`` (seconds for the whole job, default none; exit code 124 when it expires),
``--stall-timeout`` (seconds, default 300, 0 = off; see below), ``--grace`` (seconds between
SIGTERM and SIGKILL, default 5), ``--python`` (interpreter for scheduler/servers, default this
one). Everything after ``--`` is the worker command, run once per worker.

Each child is its own process group, with the output lines prefixed ``[scheduler]``,
``[server0]``, ``[worker1]``... The scheduler and the servers are ``PYTHON -c "import mxnet"``:
importing MXNet with ``DMLC_ROLE=scheduler|server`` enters the kvstore server loop
(``mxnet/kvstore/kvstore_server.py``) and returns only when the job ends. Workers get the
environment below plus ``GLUON_SSD_LAUNCH_INDEX`` (the launcher's index, 0..n-1; the kvstore rank
is assigned by the scheduler and may differ: use ``kv.rank``), ``GLUON_SSD_HEARTBEAT`` (a file for
:func:`gluon_ssd.distributed.heartbeat`) and ``PYTHONUNBUFFERED=1``.

Supervision: if a worker exits non-zero, or the scheduler/a server exits while workers still run,
every process group gets SIGTERM, then SIGKILL after ``--grace`` seconds, and the launcher exits
with the failing worker's code (1 for other failures, ``128 + signal`` if it was killed by a
signal).
When every worker has exited 0 the servers and scheduler are given ``--grace`` seconds to stop by
themselves (worker 0 tells them to at shutdown), then stopped; the launcher exits 0. SIGINT/SIGTERM
to the launcher stop everything too. Workers should use :func:`gluon_ssd.distributed.create_kvstore`
(installs a crash guard: a crashed worker ``os._exit``\\ s instead of waiting in ps-lite forever).

Stalls (``--stall-timeout S``): a frozen process does not exit, and in ``dist_sync`` every other
worker then waits for it forever. The launcher samples each child's process group every second;
when a process has been stopped (``SIGSTOP``, state ``T``) for ``S`` seconds, or when no worker
has made progress (CPU time of its process group, an output line, a touch of its heartbeat file,
or its exit) for ``S`` seconds, it prints one line naming the stuck worker (launcher name, pid and
kvstore rank, which :func:`~gluon_ssd.distributed.create_kvstore` writes into the heartbeat file),
stops everything and exits 125. Use ``--stall-timeout 0`` when attaching a debugger to a worker.

Launcher death: every child gets ``PR_SET_PDEATHSIG`` = SIGKILL (Linux), and a small watchdog
process (own session, reads a pipe from the launcher) SIGKILLs every child's process group,
grandchildren such as ``DataLoader`` workers included, when that pipe closes without a clean
shutdown; so ``kill -9`` of the launcher leaves nothing running.

Running across hosts (no launcher: start each process yourself, e.g. with ssh or a scheduler such
as Slurm). Every process, on every host, needs::

    DMLC_PS_ROOT_URI=<IP of the scheduler host>   DMLC_PS_ROOT_PORT=<free port there, e.g. 9091>
    DMLC_NUM_WORKER=<W>   DMLC_NUM_SERVER=<S>
    DMLC_ROLE=scheduler|server|worker
    DMLC_NODE_HOST=<this host's IP reachable by the others>   (or DMLC_INTERFACE=eth0)

then run exactly one ``DMLC_ROLE=scheduler python -c "import mxnet"`` (on the ROOT_URI host),
``S`` times ``DMLC_ROLE=server python -c "import mxnet"`` and ``W`` times
``DMLC_ROLE=worker python train_ssd.py --kvstore dist_sync ...`` (same code, same data on every
worker host; each worker reads its own shard). Workers and servers listen on random ports
(set ``DMLC_PORT`` per process to pin one for firewalls). ``PS_VERBOSE=1`` (or 2) logs ps-lite's
connections. On loopback set ``DMLC_NODE_HOST=127.0.0.1`` (this launcher does): otherwise ps-lite
may advertise an interface address that is not reachable. Nothing supervises such a run: a crashed
worker exits (crash guard) but the others block until killed.

Horovod (optional, ``--kvstore horovod``): it is not installed here; it builds from source
(``HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 pip install --no-binary horovod horovod``, needs a
compiler and CMake) and runs with ``horovodrun -np 2 -H localhost:2 --gloo python train_ssd.py
--kvstore horovod ...`` (no servers: allreduce between workers; this launcher is not used).
"""
import argparse
import collections
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from gluon_ssd.distributed import die_with_parent_hook
from gluon_ssd.errors import EXIT_USAGE, UserError, fail

__all__ = ['main', 'build_parser', 'parse_args', 'free_port', 'role_env', 'check_port', 'Job',
           'EXIT_TIMEOUT', 'EXIT_STALLED']

PROG = 'python -m gluon_ssd.launch'
EXIT_TIMEOUT = 124
EXIT_STALLED = 125
DEFAULT_STALL_TIMEOUT = 300.0
HEARTBEAT_ENV = 'GLUON_SSD_HEARTBEAT'   # same name as gluon_ssd.distributed.HEARTBEAT_ENV
_SAMPLE_INTERVAL = 1.0                  # seconds between two looks at /proc
_CPU_PROGRESS_TICKS = 2                 # clock ticks of CPU per sample that count as progress

# The watchdog: a tiny process in its own session that reads "<pgid>" lines from the launcher and,
# if its stdin reaches EOF without a final "done" line (the launcher died, even by SIGKILL),
# SIGKILLs those process groups (workers' forked children included) and removes the state folder.
_WATCHDOG = r"""
import os, shutil, signal, sys
launcher, state_dir = int(sys.argv[1]), sys.argv[2]
groups, done = [], False
for line in sys.stdin:
    line = line.strip()
    if line == 'done':
        done = True
        break
    if line.isdigit():
        groups.append(int(line))
if not done:
    killed = []
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)
        except OSError:
            pass
    if killed:
        try:
            sys.stderr.write('[launch-watchdog] launcher pid %d is gone: killed process groups %s\n'
                             % (launcher, ' '.join(map(str, killed))))
            sys.stderr.flush()
        except Exception:
            pass
shutil.rmtree(state_dir, ignore_errors=True)
"""


def free_port(host='127.0.0.1'):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host, port, source='--port'):
    """Raise :class:`UserError` (one line naming ``port`` and ``source``) if the scheduler could not
    listen on ``host:port``. Binds like ZeroMQ does (``SO_REUSEADDR``: a port in TIME_WAIT is
    fine, one with a listener is not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError('scheduler port %d on %s is already in use (set by %s): stop what '
                                'listens there, pick another port, or leave --port out to use a '
                                'free one' % (port, host, source)) from None
            raise UserError('cannot listen on %s:%d (set by %s, with --host): %s'
                            % (host, port, source, exc.strerror or exc)) from None


def role_env(role, host, port, num_workers, num_servers, base=None, index=None):
    """Environment of one process: ``base`` (default ``os.environ``) plus the ``DMLC_*`` keys."""
    env = dict(os.environ if base is None else base)
    env.update({
        'DMLC_ROLE': role,
        'DMLC_PS_ROOT_URI': host,
        'DMLC_PS_ROOT_PORT': str(port),
        'DMLC_NUM_WORKER': str(num_workers),
        'DMLC_NUM_SERVER': str(num_servers),
        'DMLC_NODE_HOST': host,
        'PYTHONUNBUFFERED': '1',
    })
    if role == 'worker' and index is not None:
        env['GLUON_SSD_LAUNCH_INDEX'] = str(index)
    return env


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Run a parameter-server job (scheduler, servers, workers) on this machine.',
        usage='%(prog)s -n NUM_WORKERS -s NUM_SERVERS [options] -- COMMAND [ARGS...]')
    parser.add_argument('-n', '--num-workers', type=int, required=True)
    parser.add_argument('-s', '--num-servers', type=int, required=True)
    parser.add_argument('--host', default='127.0.0.1', help='address of the scheduler and of every '
                        'process (DMLC_PS_ROOT_URI, DMLC_NODE_HOST); default 127.0.0.1')
    parser.add_argument('--port', type=int, default=None,
                        help='scheduler port (default: $DMLC_PS_ROOT_PORT if set, else a free one)')
    parser.add_argument('--timeout', type=float, default=None,
                        help='stop everything and exit 124 after this many seconds')
    parser.add_argument('--stall-timeout', type=float, default=DEFAULT_STALL_TIMEOUT,
                        metavar='SECONDS',
                        help='stop everything and exit 125 when a process has been stopped '
                        '(SIGSTOP) or no worker has made progress for this long (default %g; '
                        '0 = never)' % DEFAULT_STALL_TIMEOUT)
    parser.add_argument('--grace', type=float, default=5.0,
                        help='seconds between SIGTERM and SIGKILL (default 5)')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter for the scheduler and servers (default: this one)')
    parser.add_argument('--quiet', action='store_true', help="don't print the launcher's own lines")
    return parser


def parse_args(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``); the command follows ``--``. Errors exit 2.

    ``args.port_source`` names where the port came from (``--port``, ``$DMLC_PS_ROOT_PORT`` or
    ``None`` for a free port picked at start)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if '--' in argv:
        cut = argv.index('--')
        opts, command = argv[:cut], argv[cut + 1:]
    else:
        opts, command = argv, []
    args = parser.parse_args(opts)
    if not command:
        parser.error('no worker command: put it after "--", e.g. -- python train_ssd.py ...')
    if args.num_workers < 1:
        parser.error('-n/--num-workers must be >= 1')
    if args.num_servers < 1:
        parser.error('-s/--num-servers must be >= 1 (dist kvstores need a server)')
    args.port_source = '--port' if args.port else None
    if args.port is None:
        env_port = os.environ.get('DMLC_PS_ROOT_PORT', '').strip()
        if env_port:
            if not env_port.isdigit() or not 0 < int(env_port) <= 65535:
                parser.error('$DMLC_PS_ROOT_PORT must be a port number in [1, 65535], got %r '
                             '(unset it or pass --port)' % env_port)
            args.port, args.port_source = int(env_port), '$DMLC_PS_ROOT_PORT'
        else:
            args.port = 0
    if not 0 <= args.port <= 65535:
        parser.error('--port must be in [0, 65535]')
    if args.timeout is not None and args.timeout <= 0:
        parser.error('--timeout must be > 0')
    if args.stall_timeout < 0:
        parser.error('--stall-timeout must be >= 0 (0 turns stall detection off)')
    if args.grace < 0:
        parser.error('--grace must be >= 0')
    args.command = command
    return args


def _read_stat(pid):
    """``(state letter, pgrp, utime + stime in ticks)`` from ``/proc/PID/stat``, or ``None``."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as fh:
            stat = fh.read().decode('ascii', 'replace')
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    return fields[0], int(fields[2]), int(fields[11]) + int(fields[12])


def _group_stats(pgids):
    """``{pgid: {pid: (state, cpu ticks)}}`` of the live processes of the groups ``pgids``."""
    found = {g: {} for g in pgids}
    try:
        entries = os.listdir('/proc')
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None and stat[1] in found and stat[0] not in 'ZX':
            found[stat[1]][int(entry)] = (stat[0], stat[2])
    return found


class _Child:
    def __init__(self, name, role, argv, env, out, lock, preexec_fn=None):
        self.name, self.role = name, role
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.heartbeat = env.get(HEARTBEAT_ENV)
        now = time.monotonic()
        # stall detection state (see Job._check_stall)
        self.last_output = now
        self.last_progress = now
        self.stopped_since = None
        self.finished_at = None
        self.cpu = {}
        self.heartbeat_mtime = None
        self.tail = collections.deque(maxlen=40)
        self._thread = threading.Thread(target=self._pump, args=(out, lock), daemon=True)
        self._thread.start()

    def _pump(self, out, lock):
        prefix = ('[%s] ' % self.name).encode()
        for line in iter(self.proc.stdout.readline, b''):
            if not line.endswith(b'\n'):
                line += b'\n'
            self.last_output = time.monotonic()
            self.tail.append(line)
            with lock:
                out.write(prefix + line)
                out.flush()
        self.proc.stdout.close()

    def poll(self):
        return self.proc.poll()

    def signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def join_output(self, timeout=2.0):
        self._thread.join(timeout)

    def rank(self):
        """The kvstore rank the worker wrote into its heartbeat file, or ``None``."""
        try:
            with open(self.heartbeat) as fh:
                text = fh.read().split()
            return int(text[1]) if len(text) == 2 and text[0] == 'rank' else None
        except (OSError, TypeError, ValueError):
            return None

    def describe(self):
        rank = self.rank() if self.role == 'worker' else None
        return '%s (pid %d%s)' % (self.name, self.pid,
                                  '' if rank is None else ', kvstore rank %d' % rank)

    def sample(self, procs, now):
        """Update the stall state from ``procs`` (``{pid: (state, ticks)}`` of the group)."""
        if any(state in 'Tt' for state, _ in procs.values()):
            if self.stopped_since is None:
                self.stopped_since = now
        else:
            self.stopped_since = None
        busy = sum(max(0, ticks - self.cpu.get(pid, 0)) for pid, (_, ticks) in procs.items()
                   if pid in self.cpu) >= _CPU_PROGRESS_TICKS
        new_process = bool(self.cpu) and bool(set(procs) - set(self.cpu))
        self.cpu = {pid: ticks for pid, (_, ticks) in procs.items()}
        mtime = None
        if self.heartbeat:
            try:
                mtime = os.stat(self.heartbeat).st_mtime
            except OSError:
                pass
        beat = mtime is not None and mtime != self.heartbeat_mtime
        self.heartbeat_mtime = mtime
        if busy or new_process or beat:
            self.last_progress = now
        self.last_progress = max(self.last_progress, self.last_output)


class _Watchdog:
    """Kills every child's process group if the launcher dies without a clean shutdown."""

    def __init__(self, state_dir):
        try:
            self.proc = subprocess.Popen(
                [sys.executable, '-I', '-S', '-c', _WATCHDOG, str(os.getpid()), state_dir],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            self.proc = None

    def add(self, pgid):
        self._send('%d\n' % pgid)

    def _send(self, text):
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def close(self):
        """Clean shutdown: the children are gone, tell the watchdog to leave them alone."""
        if self.proc is None:
            return
        self._send('done\n')
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _exit_code(returncode):
    if returncode is None or returncode == 0:
        return 1
    return 128 - returncode if returncode < 0 else returncode


class Job:
    """A running job: ``Job(args).run()`` returns the launcher's exit code (raises
    :class:`~gluon_ssd.errors.UserError` for a scheduler port already in use)."""

    def __init__(self, args, out=None):
        self.args = args
        self.out = out if out is not None else sys.stdout.buffer
        self.lock = threading.Lock()
        self.children = []
        self._stop_signal = None
        self._preexec = die_with_parent_hook()
        self._watchdog = None
        self._state_dir = None
        self._next_sample = 0.0

    def log(self, msg):
        if not self.args.quiet:
            with self.lock:
                self.out.write(('[launch] %s\n' % msg).encode())
                self.out.flush()

    def _spawn(self, name, role, argv, index=None):
        env = role_env(role, self.args.host, self.port, self.args.num_workers,
                       self.args.num_servers, index=index)
        if role == 'worker':
            env[HEARTBEAT_ENV] = os.path.join(self._state_dir, 'heartbeat.%s' % name)
        child = _Child(name, role, argv, env, self.out, self.lock, self._preexec)
        self.children.append(child)
        self._watchdog.add(child.pid)
        self.log('started %s pid=%d' % (name, child.pid))
        return child

    def _on_signal(self, signum, _frame):
        self._stop_signal = signum

    def stop_all(self, grace):
        """SIGTERM (+ SIGCONT, so stopped processes get it) every process group, SIGKILL what is
        left after ``grace`` s, reap everything."""
        for child in self.children:
            if child.poll() is None:
                child.signal_group(signal.SIGTERM)
                child.signal_group(signal.SIGCONT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.poll() is None for c in self.children):
            time.sleep(0.05)
        for child in self.children:
            # also catches grandchildren left in the group after the leader exited
            child.signal_group(signal.SIGKILL)
        for child in self.children:
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.log('%s pid=%d did not die' % (child.name, child.pid))
        for child in self.children:
            child.join_output()
        self.log('exit codes: %s' % ' '.join('%s=%s' % (c.name, c.poll()) for c in self.children))

    def run(self):
        args = self.args
        if args.port:
            check_port(args.host, args.port, getattr(args, 'port_source', None) or '--port')
        self.port = args.port or free_port(args.host)
        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        start = time.monotonic()
        self._state_dir = tempfile.mkdtemp(prefix='gluon_ssd_launch_')
        self._watchdog = _Watchdog(self._state_dir)
        if self._watchdog.proc is not None:
            self.log('watchdog pid=%d' % self._watchdog.proc.pid)
        try:
            self.log('scheduler %s:%d, %d server(s), %d worker(s): %s'
                     % (args.host, self.port, args.num_servers, args.num_workers,
                        ' '.join(args.command)))
            server_argv = [args.python, '-c', 'import mxnet']
            self._spawn('scheduler', 'scheduler', server_argv)
            for i in range(args.num_servers):
                self._spawn('server%d' % i, 'server', server_argv)
            workers = [self._spawn('worker%d' % i, 'worker', args.command, index=i)
                       for i in range(args.num_workers)]
            return self._monitor(workers, start)
        except OSError as exc:  # e.g. command not found
            self.log('cannot start: %s' % exc)
            self.stop_all(args.grace)
            return 127
        finally:
            self._watchdog.close()
            shutil.rmtree(self._state_dir, ignore_errors=True)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _check_stall(self, workers):
        """A one-line reason if the job is stuck (see the module docstring), else ``None``."""
        limit = self.args.stall_timeout
        now = time.monotonic()
        if not limit or now < self._next_sample:
            return None
        self._next_sample = now + min(_SAMPLE_INTERVAL, limit / 4.0)
        running = [c for c in self.children if c.poll() is None]
        stats = _group_stats({c.pid for c in running})
        for child in running:
            child.sample(stats.get(child.pid, {}), now)
        stopped = sorted((c for c in running if c.stopped_since is not None),
                         key=lambda c: c.stopped_since)
        active = [w for w in workers if w.poll() is None]
        for worker in workers:
            if worker not in active and worker.finished_at is None:
                worker.finished_at = worker.last_progress = now  # a worker ending is progress
        latest = max(w.last_progress for w in workers)
        no_progress = active and now - latest >= limit
        # A stopped process is the precise reason, whichever limit is reached first: its peers
        # stop making progress as soon as they wait for it, a little before it is seen stopped.
        if stopped and (no_progress or now - stopped[0].stopped_since >= limit):
            return ('%s is stopped (SIGSTOP or a debugger) for %.0f s (--stall-timeout %g)'
                    % (stopped[0].describe(), now - stopped[0].stopped_since, limit))
        if no_progress:
            culprit = min(active, key=lambda w: w.last_progress)
            return ('no worker made progress (CPU time, output, heartbeat) for %.0f s '
                    '(--stall-timeout %g); %s stalled first'
                    % (now - latest, limit, culprit.describe()))
        return None

    def _bind_failed(self):
        scheduler = self.children[0]
        return scheduler.role == 'scheduler' and any(b'bind failed' in l for l in scheduler.tail)

    def _monitor(self, workers, start):
        args = self.args
        others = [c for c in self.children if c.role != 'worker']
        shutdown_deadline = None
        while True:
            if self._stop_signal is not None:
                self.log('got signal %d, stopping everything' % self._stop_signal)
                self.stop_all(args.grace)
                return 128 + self._stop_signal
            if args.timeout is not None and time.monotonic() - start > args.timeout:
                self.log('timeout after %.0f s, stopping everything' % args.timeout)
                self.stop_all(args.grace)
                return EXIT_TIMEOUT
            codes = [w.poll() for w in workers]
            failed = [(w, c) for w, c in zip(workers, codes) if c not in (None, 0)]
            if failed:
                worker, code = failed[0]
                self.log('%s exited with %d, stopping everything' % (worker.name, code))
                self.stop_all(args.grace)
                return _exit_code(code)
            if all(c == 0 for c in codes):
                break
            dead = [c for c in others if c.poll() is not None]
            crashed = [c for c in dead if c.poll() != 0]
            if crashed:
                if crashed[0].role == 'scheduler':
                    crashed[0].join_output(1.0)
                if crashed[0].role == 'scheduler' and self._bind_failed():
                    self.log('the scheduler could not listen on %s:%d (port taken after the '
                             'launcher picked it?), stopping everything; run again or pass a '
                             'free --port' % (args.host, self.port))
                    self.stop_all(args.grace)
                    return EXIT_USAGE
                self.log('%s exited with %s while workers were running, stopping everything'
                         % (crashed[0].name, crashed[0].poll()))
                self.stop_all(args.grace)
                return _exit_code(crashed[0].poll())
            if dead:
                # a clean server/scheduler exit is the normal shutdown (worker 0 stops them while
                # the workers finalise); the workers must then follow within the grace period
                if shutdown_deadline is None:
                    shutdown_deadline = time.monotonic() + max(args.grace, 5.0)
                elif time.monotonic() > shutdown_deadline:
                    self.log('%s exited while workers were still running, stopping everything'
                             % dead[0].name)
                    self.stop_all(args.grace)
                    return 1
            stall = self._check_stall(workers)
            if stall:
                self.log('stalled: %s; stopping everything' % stall)
                self.stop_all(args.grace)
                return EXIT_STALLED
            time.sleep(0.1)
        self.log('all workers finished')
        deadline = time.monotonic() + args.grace
        while time.monotonic() < deadline and any(c.poll() is None for c in others):
            time.sleep(0.05)
        lingering = [c.name for c in others if c.poll() is None]
        if lingering:
            self.log('stopping %s' % ', '.join(lingering))
        self.stop_all(args.grace)
        self.log('done in %.1f s' % (time.monotonic() - start))
        return 0


def main(argv=None):
    """Entry point; returns the exit code (see the module docstring)."""
    args = parse_args(argv)
    try:
        return Job(args).run()
    except UserError as exc:
        return fail(PROG, exc)


if __name__ == '__main__':
    sys.exit(main())
