"""Hosts on one machine: Redis, the webapp and each worker in a network namespace of its own.

    python -m devtools.cluster up --workers 4 [--prefix atf] [--subnet 10.213.7.0/24] [--models minilm]
    python -m devtools.cluster status
    python -m devtools.cluster down [--name atf3f2a]

A cluster is a Linux bridge in the root namespace on a private /24 (the
first free one of 10.213.0.0/16 unless --subnet says otherwise) and one
namespace per host, joined to the bridge by a veth pair: `<tag>-redis`
(an embedded redis-server bound to its address), `<tag>-web` (gunicorn as
the project runs it) and `<tag>-w1`, `<tag>-w2`, ... (a Celery worker each,
on the CPU). Every process runs inside its namespace (`ip netns exec`) and
reaches Redis only over the bridge; a namespace has no route anywhere
else, so the host's own Redis on 127.0.0.1:6379 is out of reach. The
bridge's address (.1) puts the root namespace on the same network: tests
and benchmarks call the webapp at http://<subnet>.3:8000.

Needs root (CAP_NET_ADMIN). Everything made is first written to
`.run/cluster-<tag>.json`, so `down` removes it all (the processes of each
namespace, the namespaces, their veths, the bridge) even after a crash;
`down` is idempotent. `Cluster` is the same as a context manager for
tests and benchmarks: `c.url`, `c.add_worker()`, `c.cut(host)`,
`c.restore(host)`, `c.kill(host)`.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from common.protocol import WORKERS_KEY
from devtools.processes import PYTHON, ROOT, ServiceFailed, service_env
from devtools.redis_server import redis_answers, server_binary

RUN_DIR = ROOT / ".run"
# /24s are taken from here, the first one no interface and no other cluster uses.
DEFAULT_POOL = ipaddress.ip_network(os.environ.get("CLUSTER_POOL", "10.213.0.0/16"))
REDIS_PORT = 6379
WEB_PORT = 8000
# Host roles and their address in the /24 (workers from .10 up).
FIXED_HOSTS = {"redis": 2, "web": 3}
FIRST_WORKER = 10


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip <args>`; with check=False a failure (already gone, say) is returned, not raised."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_allowed() -> str | None:
    """None when this process may create network namespaces, else why not."""
    probe = f"atfprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip() or made.returncode}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One namespace on the bridge: its name, the root end of its veth, its address, what runs in it."""

    role: str
    netns: str
    veth: str
    address: str
    pids: list[int] = field(default_factory=list)
    log: str = ""


@dataclass
class State:
    """What a cluster made, as written to .run/cluster-<tag>.json before it is made."""

    tag: str
    subnet: str
    bridge: str
    dir: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.dir).parent / f"cluster-{self.tag}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> "State":
        raw = json.loads(path.read_text())
        raw["hosts"] = {role: Host(**h) for role, h in raw["hosts"].items()}
        return cls(**raw)


def recorded(run_dir: Path = RUN_DIR) -> list[State]:
    """The clusters whose state files are in `run_dir`."""
    return [State.load(p) for p in sorted(run_dir.glob("cluster-*.json"))]


def pick_subnet(run_dir: Path, pool: ipaddress.IPv4Network = DEFAULT_POOL) -> str:
    """The first /24 of `pool` that no interface here and no recorded cluster overlaps."""
    used = [ipaddress.ip_network(s.subnet) for s in recorded(run_dir)]
    for line in ip("-4", "-o", "addr").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for subnet in pool.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return str(subnet)
    raise RuntimeError(f"no free /24 left in {pool}")


def namespace_pids(netns: str) -> list[int]:
    out = ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def stop_namespace(netns: str, timeout: float = 20.0) -> None:
    """SIGTERM every process of the namespace, SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in namespace_pids(netns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while namespace_pids(netns) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not namespace_pids(netns):
            return


def tear_down(state: State, timeout: float = 20.0) -> None:
    """Remove everything `state` records; what is already gone is skipped."""
    # Workers first (a warm shutdown hands its jobs back to a Redis still up), Redis last.
    order = sorted(state.hosts.values(), key=lambda h: {"web": 1, "redis": 2}.get(h.role, 0))
    for host in order:
        stop_namespace(host.netns, timeout)
    for host in order:
        ip("netns", "del", host.netns, check=False)  # takes its end of the veth, and so the pair, with it
        ip("link", "del", host.veth, check=False)  # a pair made but never moved into the namespace
    ip("link", "del", state.bridge, check=False)
    state.path.unlink(missing_ok=True)


class Cluster:
    """A cluster of namespaced hosts on one machine, removed on exit (also on an exception)."""

    def __init__(self, workers: int = 2, model_dir: Path | str = ROOT / "models", preload: str = "",
                 prefix: str = "atf", subnet: str | None = None, run_dir: Path | str = RUN_DIR,
                 worker_settings: dict | None = None, web_settings: dict | None = None,
                 ready_timeout: float = 180.0, **settings):
        if len(prefix) > 4 or not prefix.isalnum():
            raise ValueError("prefix: at most 4 letters or digits (interface names are short)")
        self.workers = workers
        self.model_dir = Path(model_dir)
        self.settings = {"preload_models": preload, **settings}
        self.worker_settings = worker_settings or {}
        self.web_settings = web_settings or {}
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tag = f"{prefix}{uuid.uuid4().hex[:5]}"
        self.requested_subnet = subnet
        self.ready_timeout = ready_timeout  # seconds a worker may take to load its PRELOAD_MODELS
        self.state: State | None = None
        self._logs: dict[str, object] = {}
        self.processes: dict[str, subprocess.Popen] = {}

    # -- addresses -------------------------------------------------------

    @property
    def dir(self) -> Path:
        return Path(self.state.dir)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.state.hosts['redis'].address}:{REDIS_PORT}/0"

    @property
    def url(self) -> str:
        return f"http://{self.state.hosts['web'].address}:{WEB_PORT}"

    def worker_hosts(self) -> list[str]:
        return [role for role in self.state.hosts if role not in FIXED_HOSTS]

    def worker_name(self, role: str) -> str:
        """The Celery node name of the worker on host `role` (`w1@<tag>-w1`)."""
        return f"{role}@{self.state.hosts[role].netns}"

    # -- building --------------------------------------------------------

    def up(self) -> "Cluster":
        """Make the bridge and the hosts, start Redis, the webapp and the workers; wait until all are ready."""
        try:
            with self._lock():
                subnet = self.requested_subnet or pick_subnet(self.run_dir)
                self.state = State(tag=self.tag, subnet=subnet, bridge=f"{self.tag}br",
                                   dir=str(self.run_dir / f"cluster-{self.tag}"))
                (self.dir / "logs").mkdir(parents=True, exist_ok=True)
                self.state.save()
                ip("link", "add", self.state.bridge, "type", "bridge")
            network = ipaddress.ip_network(subnet)
            ip("addr", "add", f"{network[1]}/{network.prefixlen}", "dev", self.state.bridge)
            ip("link", "set", self.state.bridge, "up")
            self._start_redis()
            self._start_webapp()
            for _ in range(self.workers):
                self.add_worker(wait=False)
            for role in self.worker_hosts():
                self.wait_worker(role)
            self.wait_webapp()
        except BaseException:
            self.down()
            raise
        return self

    @contextmanager
    def _lock(self):
        """Subnet choice and bridge creation, one cluster at a time (parallel test runs)."""
        with open(self.run_dir / "cluster.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _add_host(self, role: str, number: int) -> Host:
        network = ipaddress.ip_network(self.state.subnet)
        # Interface names have at most 15 characters: tag (9) + role (5) + "p" for the peer.
        host = Host(role=role, netns=f"{self.tag}-{role}", veth=f"{self.tag}{role}", address=str(network[number]))
        self.state.hosts[role] = host
        self.state.save()  # recorded before it exists: `down` finds it after a crash half-way
        peer = f"{host.veth}p"
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", host.netns)
        ip("link", "set", host.veth, "master", self.state.bridge)
        ip("link", "set", host.veth, "up")
        inside = ("netns", "exec", host.netns, "ip")
        ip(*inside, "link", "set", peer, "name", "eth0")
        ip(*inside, "addr", "add", f"{host.address}/{network.prefixlen}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")
        return host

    def _spawn(self, host: Host, argv: list[str], env: dict) -> subprocess.Popen:
        """Start `argv` inside the host's namespace, its output appended to the host's log."""
        log_path = self.dir / "logs" / f"{host.role}.log"
        log = open(log_path, "a")
        process = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self._logs[host.role] = log
        self.processes[host.role] = process
        host.pids.append(process.pid)  # `ip netns exec` execs the command: the same pid
        host.log = str(log_path)
        self.state.save()
        return process

    def env(self, **settings) -> dict:
        return service_env(self.redis_url, self.model_dir, **{**self.settings, **settings})

    def _start_redis(self) -> None:
        host = self._add_host("redis", FIXED_HOSTS["redis"])
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        self._spawn(host, [server_binary(), "--port", str(REDIS_PORT), "--bind", host.address, "127.0.0.1",
                           "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(data),
                           "--logfile", ""], dict(os.environ))
        deadline = time.monotonic() + 15
        while not redis_answers(self.redis_url, 0.3):
            self._check_alive("redis")
            if time.monotonic() > deadline:
                raise ServiceFailed(f"the cluster's Redis did not answer at {self.redis_url}:\n{self.log('redis')}")
            time.sleep(0.1)

    def _start_webapp(self) -> None:
        host = self._add_host("web", FIXED_HOSTS["web"])
        env = self.env(**self.web_settings)
        self._spawn(host, [PYTHON, "-m", "gunicorn", "webapp:create_app()", "--bind", f"0.0.0.0:{WEB_PORT}"], env)

    def add_worker(self, wait: bool = True, **settings) -> str:
        """A new worker host (`w<n>`) with its Celery worker; its role. Waits until it serves its models."""
        numbers = [int(role[1:]) for role in self.worker_hosts()]
        number = max(numbers, default=0) + 1
        role = f"w{number}"
        host = self._add_host(role, FIRST_WORKER + number - 1)
        env = self.env(worker_device="cpu", **{**self.worker_settings, **settings})
        self._spawn(host, [PYTHON, "-m", "celery", "-A", "tasks", "worker", "-n", self.worker_name(role),
                           "-l", "info"], env)
        if wait:
            self.wait_worker(role)
        return role

    # -- readiness -------------------------------------------------------

    def log(self, role: str, tail: int = 3000) -> str:
        path = self.state.hosts[role].log
        return Path(path).read_text(errors="replace")[-tail:] if path and Path(path).exists() else ""

    def _check_alive(self, role: str) -> None:
        process = self.processes[role]
        if process.poll() is not None:
            raise ServiceFailed(f"{role} exited {process.returncode}:\n{self.log(role)}")

    def entry(self, role: str) -> dict | None:
        """The worker's entry in the workers registry (its models, its holder), or None."""
        raw = redis.Redis.from_url(self.redis_url, socket_timeout=5).hget(WORKERS_KEY, self.worker_name(role))
        return json.loads(raw) if raw else None

    def wait_worker(self, role: str, timeout: float | None = None) -> None:
        """Return once the worker on `role` is registered and serves its PRELOAD_MODELS."""
        timeout = timeout or self.ready_timeout
        preload = [m for m in str(self.settings.get("preload_models") or "").split(",") if m]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(role)
            entry = self.entry(role)
            if entry and entry.get("pid") == self.processes[role].pid and all(
                    m in entry.get("models", {}) for m in preload):
                failed = {m: c for m, c in entry.get("changing", {}).items() if c.get("state") == "error"}
                if failed:
                    raise ServiceFailed(f"worker {role} could not load {failed}")
                return
            time.sleep(0.2)
        raise ServiceFailed(f"worker {role} not ready in {timeout:.0f}s:\n{self.log(role)}")

    def wait_webapp(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("web")
            try:
                urllib.request.urlopen(self.url + "/openapi.json", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise ServiceFailed(f"webapp not up at {self.url} in {timeout:.0f}s:\n{self.log('web')}")

    # -- faults ----------------------------------------------------------

    def cut(self, role: str) -> None:
        """Take the host's link down: its packets are dropped, its connections hang (a pulled cable)."""
        ip("link", "set", self.state.hosts[role].veth, "down")

    def restore(self, role: str) -> None:
        ip("link", "set", self.state.hosts[role].veth, "up")

    def kill(self, role: str) -> None:
        """SIGKILL every process of the host (a crash); the namespace and its link stay."""
        for pid in namespace_pids(self.state.hosts[role].netns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process = self.processes.get(role)
        if process is not None:
            process.wait(10)

    def netns_exec(self, role: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` inside the host's namespace (what it can reach from there)."""
        return subprocess.run(["ip", "netns", "exec", self.state.hosts[role].netns, *argv], cwd=ROOT,
                              capture_output=True, text=True, **kwargs)

    # -- teardown --------------------------------------------------------

    def down(self) -> None:
        if self.state is not None:
            tear_down(self.state)
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs.values():
            log.close()

    def __enter__(self) -> "Cluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def leftovers(tag: str) -> list[str]:
    """Namespaces and links of cluster `tag` that still exist (empty once it is down)."""
    names = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    links = [line.split()[0].split("@")[0] for line in ip("-br", "link").stdout.splitlines() if line.strip()]
    return [n for n in names + links if n.startswith(tag)]


# -- the command line -------------------------------------------------------


def cmd_up(args) -> int:
    settings = dict(kv.split("=", 1) for kv in args.set)
    cluster = Cluster(workers=args.workers, model_dir=args.model_dir, preload=args.models, prefix=args.prefix,
                      subnet=args.subnet, run_dir=args.run_dir, **{k.lower(): v for k, v in settings.items()})
    cluster.up()
    for log in cluster._logs.values():
        log.close()  # the processes keep their own descriptors; `down` stops them
    print(f"cluster {cluster.tag} up on {cluster.state.subnet} (bridge {cluster.state.bridge})")
    print(f"  API    {cluster.url}")
    print(f"  Redis  {cluster.redis_url}")
    print(f"  logs   {cluster.dir / 'logs'}")
    print(f"  down:  python -m devtools.cluster down --name {cluster.tag}")
    return 0


def cmd_status(args) -> int:
    states = recorded(Path(args.run_dir))
    if not states:
        print("no cluster recorded in", args.run_dir)
    for state in states:
        present = set(leftovers(state.tag))
        print(f"{state.tag}: {state.subnet}, bridge {state.bridge} {'up' if state.bridge in present else 'gone'}")
        for host in state.hosts.values():
            alive = namespace_pids(host.netns)
            print(f"  {host.role:<6} {host.address:<15} netns {host.netns} "
                  f"{'present' if host.netns in present else 'gone'}, processes {alive or 'none'}")
    return 0


def cmd_down(args) -> int:
    states = [s for s in recorded(Path(args.run_dir)) if not args.name or s.tag == args.name]
    for state in states:
        tear_down(state)
        if args.purge_logs:
            shutil.rmtree(state.dir, ignore_errors=True)
        print(f"{state.tag}: removed")
    if not states:
        print("nothing to remove")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(RUN_DIR), help="where state files and logs go (default .run/)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make a cluster and start its processes")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--prefix", default="atf", help="start of every name it makes (at most 4 characters)")
    up.add_argument("--subnet", default=None, help="a /24 for the bridge (default: the first free in 10.213.0.0/16)")
    up.add_argument("--models", default="", help="PRELOAD_MODELS of every worker, e.g. minilm")
    up.add_argument("--model-dir", default=os.environ.get("MODEL_DIR") or str(ROOT / "models"))
    up.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for every process, e.g. --set HEARTBEAT_S=0.5")
    sub.add_parser("status", help="the recorded clusters and what of them exists")
    down = sub.add_parser("down", help="remove recorded clusters (all, or --name)")
    down.add_argument("--name", default=None, help="the cluster's tag, e.g. atf3f2a1")
    down.add_argument("--purge-logs", action="store_true", help="also delete its logs")
    args = parser.parse_args(argv)
    if args.command == "up":
        problem = netns_allowed()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
