"""A throwaway multi-node Ray cluster on this machine, for tests and benchmarks.

`ray start --head` plus `ray start --address …` per extra node, 1 CPU each by default, every
node on its own ports and the whole cluster in its own temp dir. `stop()` kills exactly the
processes it started (found by that temp dir and those ports), so a Ray the developer runs
elsewhere on the machine is left alone; `ray stop` would stop every Ray here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class LocalCluster:
    def __init__(self, cpus_per_node: int = 1) -> None:
        self.temp = tempfile.mkdtemp(prefix="vgray", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.cpus = cpus_per_node
        self.port, self.client_port = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[list[int]] = []  # each node's ports; [0] is its node manager port
        # Token auth guards clusters reachable from a network; this one listens on this machine only.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, *args: str) -> None:
        ports = free_ports(len(_PORT_FLAGS))
        command = [
            RAY,
            "start",
            *args,
            f"--num-cpus={self.cpus}",
            "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=False)),
        ]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {result.stderr[-800:]}")
        self.nodes.append(ports)

    def start(self, nodes: int = 2) -> LocalCluster:
        self._start(
            "--head",
            f"--port={self.port}",
            f"--ray-client-server-port={self.client_port}",
            "--include-dashboard=false",
            f"--temp-dir={self.temp}",
        )
        for _ in range(nodes - 1):
            self.add_node()
        return self

    def add_node(self) -> None:
        self._start(f"--address={self.address}")

    def _processes(self, marker: str) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in part for part in process.info["cmdline"] or []):
                    found.append(process)
            except psutil.Error:
                continue
        return found

    @staticmethod
    def _kill(processes: list[psutil.Process]) -> int:
        victims = [child for p in processes for child in p.children(recursive=True)] + processes
        for victim in victims:
            try:
                victim.kill()
            except psutil.Error:
                pass
        return len(victims)

    def kill_node(self, index: int = -1) -> int:
        """SIGKILL one node's raylet and every worker it started, as if its machine died."""
        marker = f"--node_manager_port={self.nodes[index][0]}"
        return self._kill([p for p in self._processes(marker) if "raylet" in p.name()])

    def stop(self) -> None:
        markers = [self.temp, f":{self.port}", *(f"--node_manager_port={ports[0]}" for ports in self.nodes)]
        for marker in markers:
            self._kill(self._processes(marker))
