"""A ClickHouse cluster on one machine: ZooKeeper + shards x replicas of clickhouse-server.

For the tests and `python -m bench`: every process is a child of the caller, on free
loopback ports, with its own directory under `base_dir`, stopped by pid. The servers
are started the way supervisor/embedded_clickhouse.py starts one (its config, its readiness, its
PDEATHSIG tie to the starting thread); this module adds ZooKeeper and the cluster's
part of the config as a config.d file beside embedded_clickhouse's config.xml.

    with ClickHouseCluster.start(tmp_path, shards=2, replicas=2) as cluster:
        replica = cluster.shards[0].replicas[1]
        replica.kill()            # kill -9
        replica.start()           # again, on its data and its ports
        cluster.zookeeper.stop()  # ... and .start()

Start order matters in 18.16: ZooKeeper first, and only once it serves sessions
(4lw `srvr` says `Mode: standalone`; `ruok` says imok earlier); with ZooKeeper late,
the first ON CLUSTER statement crashed the server. Stop order: disconnect your clients,
then the servers (a server with a client connected takes ~10 s to exit), then ZooKeeper.

By hand: `python -m bench.clickhouse_cluster DIR [--shards 2] [--replicas 2]` starts
one, prints where each server listens and runs until Ctrl-C. Needs java and Debian's
`zookeeper` package (deploy/setup.sh installs both) and clickhouse-server.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError

from supervisor import embedded, embedded_clickhouse

HOST = "127.0.0.1"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
# Without a binding slf4j prints a warning per start; nop keeps ZooKeeper quiet.
SLF4J_NOP_JAR = Path("/usr/share/java/slf4j-nop.jar")
_ZOOKEEPER_HINT = ("install it with: apt-get install -y --no-install-recommends zookeeper "
                   "(deploy/setup.sh does; not zookeeperd, which runs a system service)")


def find_zookeeper() -> list[str]:
    """argv that runs ZooKeeper standalone (the config file still to be appended)."""
    java = shutil.which("java")
    if java is None:
        raise embedded.ServerNotFoundError("java not found on PATH (ZooKeeper needs it); " + _ZOOKEEPER_HINT)
    if not ZOOKEEPER_JAR.is_file():
        raise embedded.ServerNotFoundError(f"{ZOOKEEPER_JAR} not found; " + _ZOOKEEPER_HINT)
    # The jar's manifest Class-Path pulls in its own dependencies.
    classpath = ":".join(str(p) for p in (ZOOKEEPER_JAR, SLF4J_NOP_JAR) if p.is_file())
    return [java, "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-cp", classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain"]


@dataclass
class ZooKeeper:
    """One standalone ZooKeeper; start() again reuses its data and port."""

    port: int
    data_dir: Path
    host: str = HOST
    server: embedded.ServerProcess | None = None

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start it and return once it serves sessions (`srvr` says Mode: standalone)."""
        argv = find_zookeeper()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "zoo.cfg"
        # tickTime 500 ms allows session timeouts down to 1 s; the 4lw commands are for readiness.
        config.write_text(
            "tickTime=500\n"
            f"dataDir={self.data_dir / 'data'}\n"
            f"clientPort={self.port}\nclientPortAddress={self.host}\n"
            "maxClientCnxns=0\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr\nminSessionTimeout=1000\n")
        log = self.data_dir / "zookeeper.log"
        self.server = embedded.spawn("zookeeper", [*argv, str(config)], self.host, self.port,
                                      self.data_dir, log, stderr_path=log, cwd=self.data_dir)
        embedded.wait_ready(self.server, ready_timeout, lambda: "Mode: standalone" in self.four_letters("srvr"))

    def stop(self) -> None:
        """SIGTERM and wait (ZooKeeper exits in well under a second)."""
        if self.server is not None:
            self.server.stop()

    def kill(self) -> None:
        """kill -9."""
        if self.server is not None:
            self.server.proc.kill()
            self.server.proc.wait()

    def four_letters(self, word: str) -> str:
        """A 4lw command's answer, '' when it does not answer."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                sock.sendall(word.encode())
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
        except OSError:
            return ""
        return b"".join(chunks).decode(errors="replace")


@dataclass
class Replica:
    """One clickhouse-server: replica `name` of shard `shard` (1-based, as in the macros)."""

    shard: int
    name: str
    port: int
    http_port: int
    interserver_port: int
    data_dir: Path
    host: str = HOST
    server: embedded.ServerProcess | None = None

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def start(self, ready_timeout: float = 60.0) -> None:
        """Start it on its data and ports; ready once /ping answers and ZooKeeper is readable.

        The cluster config (config.d/cluster.xml) was written by ClickHouseCluster.start;
        embedded_clickhouse rewrites only config.xml and users.xml.
        """
        self.server = embedded_clickhouse.start_clickhouse(self.data_dir, self.port, self.host, self.http_port,
                                                ready_timeout=ready_timeout)
        deadline = time.monotonic() + ready_timeout
        while not self._reads_zookeeper():
            if not self.server.alive() or time.monotonic() > deadline:
                self.server.stop()
                raise embedded.ServerStartError(
                    f"clickhouse-server {self.address} (shard {self.shard}, replica {self.name}) could not "
                    f"read system.zookeeper within {ready_timeout:.0f}s\n{self.server.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait; disconnect clients first or it takes ~10 s."""
        if self.server is not None:
            self.server.stop(timeout=30.0)

    def kill(self) -> None:
        """kill -9."""
        if self.server is not None:
            self.server.proc.kill()
            self.server.proc.wait()

    def client(self, **settings) -> Client:
        """A clickhouse-driver client for this replica; the caller disconnects it."""
        return Client(host=self.host, port=self.port, settings=settings, connect_timeout=2,
                      send_receive_timeout=30)

    def _reads_zookeeper(self) -> bool:
        client = Client(host=self.host, port=self.port, connect_timeout=2, send_receive_timeout=5)
        try:
            client.execute("SELECT count() FROM system.zookeeper WHERE path = '/'")
            return True
        except (DriverError, OSError, EOFError):
            return False
        finally:
            client.disconnect()


@dataclass
class Shard:
    number: int  # 1-based, as in the macros and system.clusters.shard_num
    weight: int
    replicas: list[Replica] = field(default_factory=list)


@dataclass
class ClickHouseCluster:
    """ZooKeeper and shards x replicas of clickhouse-server; see the module's docstring."""

    cluster_name: str
    zookeeper: ZooKeeper
    shards: list[Shard]
    base_dir: Path

    @classmethod
    def start(cls, base_dir: Path, shards: int = 2, replicas: int = 2, weights: list[int] | None = None,
              cluster_name: str = "jetsink", session_timeout_ms: int = 10_000) -> ClickHouseCluster:
        """Start ZooKeeper, then every server; return once all are ready (stop all if one fails).

        Raises embedded.ServerNotFoundError naming what to install before starting anything.
        """
        weights = list(weights or [1] * shards)
        if len(weights) != shards or shards < 1 or replicas < 1:
            raise ValueError(f"{shards} shards x {replicas} replicas with weights {weights}")
        embedded_clickhouse.find_clickhouse_server()
        find_zookeeper()
        base_dir = Path(base_dir)
        ports = iter(_free_ports(1 + 3 * shards * replicas))
        cluster = cls(cluster_name, ZooKeeper(next(ports), base_dir / "zookeeper"), [], base_dir)
        for s, weight in enumerate(weights, start=1):
            cluster.shards.append(Shard(s, weight, [
                Replica(s, f"r{r}", next(ports), next(ports), next(ports), base_dir / f"s{s}r{r}")
                for r in range(1, replicas + 1)]))
        try:
            cluster.zookeeper.start()
            for replica in cluster.replicas:
                cluster._write_config(replica, session_timeout_ms)
                replica.start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def replicas(self) -> list[Replica]:
        return [replica for shard in self.shards for replica in shard.replicas]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the servers (all at once), then ZooKeeper; disconnect your clients first."""
        servers = [r.server for r in self.replicas if r.server is not None and r.alive()]
        for server in servers:
            server.proc.send_signal(signal.SIGTERM)
        for server in servers:
            # Not embedded.terminate: it would send a second SIGTERM.
            try:
                server.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        self.zookeeper.stop()

    def __enter__(self) -> ClickHouseCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def remote_servers_xml(self) -> str:
        """The <remote_servers> section naming every replica, in shard order."""
        shards = "".join(
            f"<shard><weight>{shard.weight}</weight><internal_replication>true</internal_replication>"
            + "".join(f"<replica><host>{r.host}</host><port>{r.port}</port></replica>" for r in shard.replicas)
            + "</shard>"
            for shard in self.shards)
        return f"<remote_servers><{self.cluster_name}>{shards}</{self.cluster_name}></remote_servers>"

    def _write_config(self, replica: Replica, session_timeout_ms: int) -> None:
        # config.d is merged into embedded_clickhouse's config.xml by the server itself.
        config_d = replica.data_dir / "etc" / "config.d"
        config_d.mkdir(parents=True, exist_ok=True)
        zk = self.zookeeper
        (config_d / "cluster.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
    <timezone>UTC</timezone>
    <interserver_http_host>{replica.host}</interserver_http_host>
    <interserver_http_port>{replica.interserver_port}</interserver_http_port>
    {self.remote_servers_xml()}
    <zookeeper>
        <node><host>{zk.host}</host><port>{zk.port}</port></node>
        <session_timeout_ms>{session_timeout_ms}</session_timeout_ms>
    </zookeeper>
    <macros><shard>{replica.shard}</shard><replica>{escape(replica.name)}</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
""")


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all bound at once, so the OS cannot hand one out twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clickhouse_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("base_dir", type=Path, help="a directory for ZooKeeper's and each server's files")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--name", default="jetsink", help="the cluster's name in remote_servers")
    args = parser.parse_args(argv)
    try:
        started = time.monotonic()
        cluster = ClickHouseCluster.start(args.base_dir, args.shards, args.replicas, cluster_name=args.name)
    except (embedded.ServerNotFoundError, embedded.ServerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with cluster:
        print(f"cluster {cluster.cluster_name} up in {time.monotonic() - started:.1f}s")
        print(f"zookeeper {cluster.zookeeper.host}:{cluster.zookeeper.port} pid {cluster.zookeeper.pid}")
        for r in cluster.replicas:
            print(f"shard {r.shard} replica {r.name} {r.address} http {r.http_port} pid {r.pid} {r.data_dir}")
        print("Ctrl-C stops it", flush=True)
        # Blocked only now: the children must not inherit a mask that ignores SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
