"""Shared by the benchmark and soak scripts (scripts/bench, bench-celery, bench-otel,
bench-report, soak): free ports, a raw RESP client, HTTP GETs, /proc readings, kombu
envelopes, Redis servers, the sidecar and wrk runs, and processes that are all killed at the
end. Not used by the tests (tests/support/mod.rs is their harness).
"""

import base64
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "redis-celery-sidecar")
SEP = b"\x06\x16"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Redis:
    """A raw RESP client: enough for pipelined writes and simple replies."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def reply(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b"-", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()

    def pipeline(self, commands):
        self.s.sendall(b"".join(resp(*c) for c in commands))
        return [self.reply() for _ in commands]


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def wait_for(what, check, limit=60.0, step=0.05):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(step)
    sys.exit(f"{os.path.basename(sys.argv[0])}: timed out waiting for {what}")


def sample(metrics, series):
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def celery_check(port):
    status, body = http_get(port, "/healthz")
    return json.loads(body)["checks"]["celery"]


def thread_schedstat(pid):
    """Each thread's /proc/PID/task/TID/schedstat, in ns: {tid: (time on a core, time waiting,
    runnable, for one)}. Exact to the nanosecond; a thread that has ended is not in it."""
    stats = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return stats
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]
            stats[int(tid)] = (int(run), int(wait))
        except (OSError, ValueError):
            pass
    return stats


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def envelope(body):
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"hostname": body.get("hostname", "x") if isinstance(body, dict) else "x"},
        "properties": {"body_encoding": "base64", "delivery_tag": "bench"},
    }).encode()


class Procs:
    """Processes started by a script, all stopped by `stop_all` (in a `finally`). A SIGTERM
    to the script becomes SystemExit, so that the `finally` runs for it too."""

    def __init__(self):
        self.procs = []
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def start(self, args, **kw):
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.killpg(p.pid, signal.SIGKILL) if getattr(p, "group", False) else p.kill()
                except OSError:
                    pass
                p.wait()


def redis_server(procs, tmp, name="redis", port=None, pin=()):
    """A redis-server on loopback (`port`, or a free one) that keeps nothing on disk, in
    tmp/name, started with the `pin` prefix (taskset...), answering PING: (process, port)."""
    port = port or free_port()
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    p = procs.start([*pin, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", d])
    wait_for(f"redis-server {name}", lambda: Redis(port).call("PING") == b"PONG")
    return p, port


def start_redis(procs, tmp):
    return redis_server(procs, tmp)[1]


def sidecar(procs, tmp, env, pin=(), **kw):
    """The release sidecar on a free port with `env` (over PATH, the port and RUST_LOG=warn),
    started with the `pin` prefix and `kw` for Popen, once /livez answers: (process, port)."""
    port = free_port()
    full = {"PATH": os.environ.get("PATH", ""), "SIDECAR_LISTEN_ADDR": f"127.0.0.1:{port}",
            "RUST_LOG": "warn"}
    full.update(env)
    p = procs.start([*pin, BIN], env=full, cwd=tmp, **kw)
    wait_for("the sidecar", lambda: http_status(port, "/livez") == 200)
    return p, port


def start_sidecar(procs, tmp, redis_port, extra=None):
    """A sidecar on a broker at `redis_port`, once its celery check has reported."""
    p, port = sidecar(procs, tmp, {"CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0", **(extra or {})})
    wait_for("the sidecar's celery check", lambda: http_get(port, "/healthz")[1].find('"celery"') > 0)
    return p, port




def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_status(port, path, timeout=2.0):
    """Status code of a GET, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64).decode(errors="replace")
            return int(head.split()[1])
    except (OSError, IndexError, ValueError):
        return None


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def wrk(port, conns, duration, cpu=None, path="/metrics"):
    # One wrk thread: on a 2-core machine the load generator gets one core and the server
    # the other; two wrk threads would compete with the server and measure the scheduler.
    # `cpu` pins it to that core (taskset).
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(
        pin + ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "20s", "--latency",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=False,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    timeouts = re.search(r"timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": to_ms(p50.group(1)) if p50 and done and int(done.group(1)) > 0 else None,
        "p99": to_ms(p99.group(1)) if p99 and done and int(done.group(1)) > 0 else None,
        "requests": int(done.group(1)) if done else 0,
        "errors": (int(timeouts.group(1)) if timeouts else 0) + (int(non2xx.group(1)) if non2xx else 0),
    }


def fmt_ms(v):
    return "n/a" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Linux {platform.release()}"
