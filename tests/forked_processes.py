"""Processes forked from one pre-imported parent per pytest worker: the CLI runs of the tests
(`conftest.run_cli`) and the workers that torchrun and `accelerate launch` start.

    python -m tests.forked_processes serve SOCKET [MODULE ...]   # the server (conftest starts it)
    python -I tests/forked_processes.py MODULE [ARG ...]          # a worker, as torchrun starts one

Every CLI process of the suite pays mostly for its imports (torch, transformers.trainer, peft,
bitsandbytes, datasets: about 8 s of CPU), and the several-process tests start two of them per
launch. The server imports all of that once and forks a process per request. A request comes
over a Unix socket (path in PTFT_TEST_FORK_SERVER) with the caller's standard streams (passed as
file descriptors), environment, folder and command line; the forked process becomes
`python -m MODULE ARG...` there (`benchmarks.forkserver._run_module`: the module as `__main__`,
the request's PYTHONPATH `sitecustomize` hooks, OMP threads) in a session of its own.

A worker started by torchrun is this file run as a script (`--no-python`, stdlib only, a few ms):
it hands its streams to the server and stays for as long as the forked process runs, as its
stand-in. It forwards the signals torchrun sends (SIGTERM, SIGINT, ...) and exits with the forked
process's status (a signal's death as that signal), so torchrun's agent sees its worker live and
end as the real one does. When the stand-in is killed outright (SIGKILL), the server kills the
forked process and its session at once. What forking leaves out is the interpreter's own start-up;
PTFT_TEST_CLI=exec starts every process afresh instead (tests/integration/test_packaging.py
starts the installed console script cold in any case).

The forked process knows its stand-in's pid (PTFT_FORKED_FOR), so a test hook that walks the
process tree (the whole job killed at a save) starts from the process torchrun started.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys

SOCKET_ENV = "PTFT_TEST_FORK_SERVER"
STAND_IN_ENV = "PTFT_FORKED_FOR"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")


def send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """The request (length-prefixed JSON) with the three standard streams' descriptors."""
    body = json.dumps(request).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body))], fds)
    sock.sendall(body)


def _receive_request(sock: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, 3)
    while len(header) < _HEADER.size:
        header += sock.recv(_HEADER.size - len(header))
    (size,) = _HEADER.unpack(header)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the request ended early")
        body += chunk
    return json.loads(body), fds


def read_replies(sock: socket.socket):
    """The server's replies, one JSON object per line: {"pid": n}, then {"returncode": n}."""
    buffered = b""
    while True:
        while b"\n" not in buffered:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        yield json.loads(line)


def forward_signal(sock: socket.socket, number: int) -> None:
    sock.sendall(f"{number}\n".encode())


# --- the server -----------------------------------------------------------------------------------

def _become(request: dict, fds: list[int]) -> None:
    """In the forked process: `python -m <module> <argv>` with the caller's streams; never returns."""
    from benchmarks.forkserver import _run_module, end_as_process

    def run() -> int:
        os.setsid()
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        return _run_module(request["module"], request["argv"], request["env"])

    end_as_process(run)


def _kill_session(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass


def _attend(conn: socket.socket) -> None:
    """One connection, in a process forked for it: fork the worker, pass on the caller's signals,
    report the worker's status; kill the worker's session when the caller goes away first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request, fds = _receive_request(conn)
    env = dict(request["env"])
    if request.get("stand_in"):
        env[STAND_IN_ENV] = str(request["stand_in"])
    worker = os.fork()
    if worker == 0:
        conn.close()
        _become(dict(request, env=env), fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": worker}).encode() + b"\n")
    ended = os.pidfd_open(worker)
    pending = b""
    while True:
        ready, _, _ = select.select([conn, ended], [], [])
        if ended in ready:
            _, status = os.waitpid(worker, 0)
            try:
                conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass
            return
        chunk = conn.recv(64)
        if not chunk:  # the caller is gone (a stand-in killed outright): so is its worker
            _kill_session(worker, signal.SIGKILL)
            os.waitpid(worker, 0)
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _kill_session(worker, int(line))


def serve(path: str, modules: list[str]) -> int:
    import importlib

    sys.stdout = sys.stderr  # whatever the imports print stays off the ready line
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library missing: the run that needs it says so itself
            pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the attendants are reaped as they end
    sys.__stdout__.write("ready\n")
    sys.__stdout__.flush()
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            code = 0
            try:
                _attend(conn)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        conn.close()


# --- a worker's stand-in --------------------------------------------------------------------------

def stand_in(module: str, argv: list[str]) -> int:
    """Run `python -m module argv` as a process forked by the server, standing in for it here."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ[SOCKET_ENV])
    send_request(sock, {"module": module, "argv": argv, "env": dict(os.environ), "cwd": os.getcwd(),
                        "stand_in": os.getpid()}, [0, 1, 2])
    for number in _FORWARDED:
        signal.signal(number, lambda received, _frame: forward_signal(sock, received))
    code = 1
    for reply in read_replies(sock):
        if "returncode" in reply:
            code = reply["returncode"]
            break
    if code < 0:  # die of the same signal, as the worker did
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        raise SystemExit(serve(sys.argv[2], sys.argv[3:]))
    raise SystemExit(stand_in(sys.argv[1], sys.argv[2:]))
