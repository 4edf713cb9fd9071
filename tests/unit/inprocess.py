"""The whole agent in the test's own event loop: its control socket, app manager and switches, under a
temporary root, with the fake systemd and no journal. Nothing of the host is touched."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

from bloom_agent.config import agent as config
from bloom_agent.config.paths import Paths
from bloom_agent.control import client
from bloom_agent.control import listener
from bloom_agent.daemon.agent import Agent
from bloom_agent.daemon.notify import Notifier
from bloom_agent.deploy.switcher import Journal
from bloom_agent.store.state import StateStore, boot_id_from
from bloom_agent.systemd.unitfailure import no_journal
from fake_systemd import FakeJournal, FakeSystemd

APP = 'listen = ["127.0.0.1:{port}"]\nexec = "bin/app"\nprobation_sec = {probation}\n'


class InProcessAgent:
    def __init__(self, root: Path, systemd: FakeSystemd | None = None, loop_lag=None) -> None:
        self.root = root
        self.loop_lag = loop_lag
        self.config = config.load(root / "etc/bloom/agent.toml")  # absent: every default, below root
        self.paths = Paths.for_host(self.config, root)
        self.systemd = systemd or FakeSystemd()
        self.agent: Agent | None = None
        self.task: asyncio.Task | None = None

    def declare(self, name: str, port: int, probation: float = 0.2, extra: str = "") -> None:
        self.paths.apps_dir.mkdir(parents=True, exist_ok=True)
        (self.paths.apps_dir / f"{name}.toml").write_text(APP.format(port=port, probation=probation) + extra)

    def set_boot_id(self, value: str) -> None:
        self.paths.boot_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.paths.boot_id_file.write_text(value + "\n")

    def tarball(self, name: str, version: str) -> Path:
        path = self.root / f"{name}-{version}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            program = f"#!/bin/sh\necho {version}\n".encode()
            info = tarfile.TarInfo("bin/app")
            info.mode, info.size = 0o755, len(program)
            tar.addfile(info, io.BytesIO(program))
        return path

    async def _systemd(self):
        return self.systemd

    async def start(self, api_sock=None) -> "InProcessAgent":
        """``api_sock``: a listening TCP socket for the HTTPS API, as bloom-agent-api.socket would pass it
        (the [api] settings come from ROOT/etc/bloom/agent.toml, read when this object was made)."""
        store = StateStore(self.paths.state_db, boot_id=boot_id_from(self.paths.boot_id_file))
        sock = listener.bind(self.paths.control_socket, self.config.control_group)
        self.agent = Agent(self.config, self.paths, store, Notifier({}), sock, self._systemd,
                           Journal(monitor=FakeJournal, tail=no_journal), api_sock=api_sock,
                           loop_lag=self.loop_lag)
        self.task = asyncio.ensure_future(self.agent.run())
        for _ in range(200):
            if self.agent.state_text == "idle":
                return self
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        raise AssertionError("the agent did not get ready")

    async def call(self, command: str, args: dict | None = None, progress: list | None = None):
        """bloomctl's client, in a thread: it blocks, and the agent runs in this loop. A ``tarball``
        argument is sent with the request, as bloomctl sends it."""
        args = dict(args or {})
        tarball = args.pop("tarball", None)
        upload = open(tarball, "rb") if tarball else None
        if tarball:
            args["filename"] = tarball.name
        try:
            return await asyncio.to_thread(client.call, command, args, socket_path=self.paths.control_socket,
                                           on_progress=progress.append if progress is not None else None,
                                           timeout=30, upload=upload)
        finally:
            if upload:
                upload.close()

    async def in_probation(self, app: str, first: str, second: str) -> None:
        """``first`` serving, and a switch to ``second`` in a long probation (the app file says 60 s)."""
        await self.call("deploy", {"app": app, "tarball": self.tarball(app, first)})
        self.declare(app, 8080, probation=60)
        await self.call("reload")
        await self.call("deploy", {"app": app, "tarball": self.tarball(app, second), "wait": False})
        while (await self.call("status", {"app": app}))["state"] != "probation":
            await asyncio.sleep(0.02)

    async def settled(self) -> None:
        """Wait until the agent's reconcile after start is over."""
        if self.agent._reconciling is not None:
            await asyncio.wait_for(asyncio.shield(self.agent._reconciling), 10)

    async def stop(self) -> int:
        self.agent.stop()
        code = await asyncio.wait_for(self.task, 10)
        self.paths.control_socket.unlink(missing_ok=True)
        return code
