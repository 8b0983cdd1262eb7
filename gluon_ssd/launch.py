"""Start a parameter-server job (scheduler + servers + workers) on this machine.

Usage::

    python -m gluon_ssd.launch -n 2 -s 1 -- python train_ssd.py --kvstore dist_sync ...

Options: ``-n/--num-workers`` (>= 1), ``-s/--num-servers`` (>= 1), ``--host`` (address everything
binds to and connects to, default ``127.0.0.1``), ``--port`` (scheduler port, default: a free one),
``--timeout`` (seconds for the whole job, default none; exit code 124 when it expires),
``--grace`` (seconds between SIGTERM and SIGKILL, default 5), ``--python`` (interpreter for
scheduler/servers, default this one). Everything after ``--`` is the worker command, run once per
worker.

Each child is its own process group, with the output lines prefixed ``[scheduler]``,
``[server0]``, ``[worker1]``... The scheduler and the servers are ``PYTHON -c "import mxnet"``:
importing MXNet with ``DMLC_ROLE=scheduler|server`` enters the kvstore server loop
(``mxnet/kvstore/kvstore_server.py``) and returns only when the job ends. Workers get the
environment below plus ``GLUON_SSD_LAUNCH_INDEX`` (the launcher's index, 0..n-1; the kvstore rank
is assigned by the scheduler and may differ: use ``kv.rank``) and ``PYTHONUNBUFFERED=1``.

Supervision: if a worker exits non-zero, or the scheduler/a server exits while workers still run,
every process group gets SIGTERM, then SIGKILL after ``--grace`` seconds, and the launcher exits
with the failing worker's code (1 for other failures, ``128 + signal`` if it was killed by a
signal).
When every worker has exited 0 the servers and scheduler are given ``--grace`` seconds to stop by
themselves (worker 0 tells them to at shutdown), then stopped; the launcher exits 0. SIGINT/SIGTERM
to the launcher stop everything too. Workers should use :func:`gluon_ssd.distributed.create_kvstore`
(installs a crash guard: a crashed worker ``os._exit``\\ s instead of waiting in ps-lite forever).

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
import os
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ['main', 'build_parser', 'parse_args', 'free_port', 'role_env', 'Job']

EXIT_TIMEOUT = 124


def free_port(host='127.0.0.1'):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
        prog='python -m gluon_ssd.launch',
        description='Run a parameter-server job (scheduler, servers, workers) on this machine.',
        usage='%(prog)s -n NUM_WORKERS -s NUM_SERVERS [options] -- COMMAND [ARGS...]')
    parser.add_argument('-n', '--num-workers', type=int, required=True)
    parser.add_argument('-s', '--num-servers', type=int, required=True)
    parser.add_argument('--host', default='127.0.0.1', help='address of the scheduler and of every '
                        'process (DMLC_PS_ROOT_URI, DMLC_NODE_HOST); default 127.0.0.1')
    parser.add_argument('--port', type=int, default=0, help='scheduler port (default: a free one)')
    parser.add_argument('--timeout', type=float, default=None,
                        help='stop everything and exit 124 after this many seconds')
    parser.add_argument('--grace', type=float, default=5.0,
                        help='seconds between SIGTERM and SIGKILL (default 5)')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter for the scheduler and servers (default: this one)')
    parser.add_argument('--quiet', action='store_true', help="don't print the launcher's own lines")
    return parser


def parse_args(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``); the command follows ``--``. Errors exit 2."""
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
    if not 0 <= args.port <= 65535:
        parser.error('--port must be in [0, 65535]')
    if args.timeout is not None and args.timeout <= 0:
        parser.error('--timeout must be > 0')
    if args.grace < 0:
        parser.error('--grace must be >= 0')
    args.command = command
    return args


class _Child:
    def __init__(self, name, role, argv, env, out, lock):
        self.name, self.role = name, role
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._thread = threading.Thread(target=self._pump, args=(out, lock), daemon=True)
        self._thread.start()

    def _pump(self, out, lock):
        prefix = ('[%s] ' % self.name).encode()
        for line in iter(self.proc.stdout.readline, b''):
            if not line.endswith(b'\n'):
                line += b'\n'
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


def _exit_code(returncode):
    if returncode is None or returncode == 0:
        return 1
    return 128 - returncode if returncode < 0 else returncode


class Job:
    """A running job: ``Job(args).run()`` returns the launcher's exit code."""

    def __init__(self, args, out=None):
        self.args = args
        self.out = out if out is not None else sys.stdout.buffer
        self.lock = threading.Lock()
        self.children = []
        self._stop_signal = None

    def log(self, msg):
        if not self.args.quiet:
            with self.lock:
                self.out.write(('[launch] %s\n' % msg).encode())
                self.out.flush()

    def _spawn(self, name, role, argv, index=None):
        env = role_env(role, self.args.host, self.port, self.args.num_workers,
                       self.args.num_servers, index=index)
        child = _Child(name, role, argv, env, self.out, self.lock)
        self.children.append(child)
        self.log('started %s pid=%d' % (name, child.pid))
        return child

    def _on_signal(self, signum, _frame):
        self._stop_signal = signum

    def stop_all(self, grace):
        """SIGTERM every process group, SIGKILL what is left after ``grace`` s, reap everything."""
        for child in self.children:
            if child.poll() is None:
                child.signal_group(signal.SIGTERM)
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
        self.port = args.port or free_port(args.host)
        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        start = time.monotonic()
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
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

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
    return Job(args).run()


if __name__ == '__main__':
    sys.exit(main())
