"""Build the image and prove it works: `make image` / `make image-test` (not part of `make test`: it downloads GBs).

`build` builds the Dockerfile with docker where a Docker daemon answers, else with buildah (chroot isolation,
as on machines without a container runtime: see docs/deploy.md), and records the build time and image size.
`test` builds, then runs compose.yaml's topology from the image as processes on the host network (buildah run /
docker run), all sharing one /data folder:
  1. a Chroma server (`chroma run`, from the image's chromadb) and an ingest worker (`python -m ingest --worker`);
     the image's sample library is copied into the worker's inbox and the job table is watched until it is in,
  2. the web app, until `/_stcore/health` answers; then the image's HEALTHCHECK command, run inside it,
  3. a question asked through the app over HTTP: headless Chromium opens the Ask page, types the question and
     waits for the cited answer (the same path a user takes; Streamlit has no REST API to call instead).
The numbers go to docs/deploy.md ("Image, measured"). Every process it starts is stopped by its id.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_MD = ROOT / "docs" / "deploy.md"
QUESTION = "What is the LinnSequencer?"
CITATION = "[1] linnsequencer_manual.pdf p."
UID = 10001  # the image's seekframe user: the mounted knowledge base must be writable by it


def log(message: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {message}", flush=True)


def docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def tool() -> str:
    if docker_works():
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    sys.exit("neither a working docker nor buildah: install Docker, or on a machine without a container runtime "
             "run shared/recipes/container/base-image.sh (buildah + local base images) first")


def build(tag: str, flavour: str) -> dict:
    runner = tool()
    if runner == "docker":
        command = ["docker", "build", "--build-arg", f"FLAVOUR={flavour}", "-t", tag, "."]
    else:
        # --format docker: the OCI format has no HEALTHCHECK, and buildah would drop it.
        command = ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "docker", "--build-arg",
                   f"FLAVOUR={flavour}", "-t", tag, "."]
    log(" ".join(command))
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.monotonic() - started
    size = image_size(runner, tag)
    log(f"built {tag} ({flavour}) in {seconds:.0f} s, {size / 1e9:.2f} GB")
    return {"tag": tag, "flavour": flavour, "builder": runner, "seconds": seconds, "bytes": size}


def image_size(runner: str, tag: str) -> int:
    if runner == "docker":
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                             text=True, check=True).stdout
        return int(out.strip())
    # buildah shares podman's image store; podman reports the size in bytes (buildah only in words)
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip())


class Container:
    """One container of the image; `run` is a process in it on the host network, with /data and /cache mounted."""

    def __init__(self, runner: str, tag: str, data: Path, cache: Path) -> None:
        self.runner, self.tag = runner, tag
        # Only /data: with a second -v for another VOLUME of the image, buildah (chroot isolation) silently gave
        # the container fresh folders instead of the host's. /cache (model downloads) is not needed offline.
        self.mounts = ["-v", f"{data}:/data"]
        self.name = ""
        if runner == "buildah":
            self.name = subprocess.run(["buildah", "from", tag], capture_output=True, text=True,
                                       check=True).stdout.strip()

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        flags = [x for key, value in env.items() for x in ("--env" if self.runner == "buildah" else "-e",
                                                             f"{key}={value}")]
        if self.runner == "buildah":
            return ["buildah", "run", "--isolation", "chroot", *self.mounts, *flags, self.name, "--", *argv]
        return ["docker", "run", "--rm", "--network", "host", *self.mounts, *flags, self.tag, *argv]

    def remove(self) -> None:
        if self.runner == "buildah" and self.name:
            subprocess.run(["buildah", "rm", self.name], capture_output=True)


def wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"FAILED: timed out after {timeout:.0f} s waiting for {what}")


def ask_in_browser(url: str, workdir: Path) -> str:
    """Ask QUESTION on the app's Ask page in headless Chromium; returns the answer text the page shows."""
    from tests.test_app_browser import CHROMIUM, chromium

    if CHROMIUM is None:
        raise SystemExit("FAILED: chromium is not installed (`make browser` installs it): it asks the question")
    with chromium(workdir / "chromium") as tools:
        tools.send("Page.navigate", url=url)
        tools.wait_text("Ask your knowledge base", timeout=120)
        tools.type_question(QUESTION)
        tools.wait_text(CITATION, timeout=180)
        return tools.eval("document.body.innerText") or ""


def stop(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session (it and its children: buildah run's child)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def job_table(data: Path) -> list[dict]:
    """The jobs the image's worker recorded (read-only: the worker, another user, owns the file)."""
    path = data / "kb" / "jobs.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        jobs = [dict(r) for r in db.execute("SELECT id, label, state, chunks FROM jobs")]
        for job in jobs:
            job["files"] = [dict(r) for r in db.execute("SELECT rel, state, result, chunks FROM job_files "
                                                       "WHERE job_id = ?", (job["id"],))]
        return jobs
    finally:
        db.close()


def test(built: dict, port: int) -> dict:
    """The compose topology from the image, as processes: Chroma server, ingest worker, app."""
    runner, tag = built["builder"], built["tag"]
    workdir = Path(tempfile.mkdtemp(prefix="seekframe-image-"))
    # buildah's chroot isolation cannot reach a mount source below a folder only root may enter (mkdtemp's 0700):
    # the container would get an empty folder instead, silently.
    workdir.chmod(0o755)
    data, cache = workdir / "data", workdir / "cache"
    for folder in (data / "kb", data / "inbox", data / "chroma", cache):
        folder.mkdir(parents=True)
    for folder in (data, data / "kb", data / "inbox", data / "chroma", cache):
        os.chown(folder, UID, UID) if os.geteuid() == 0 else None
    chroma_port = port + 1
    env = {"KB_ENGINE": "ocr", "KB_EMBED_MODEL": "bundled:all-MiniLM-L6-v2", "HF_HUB_OFFLINE": "1",
           "KB_CHROMA_URL": f"http://127.0.0.1:{chroma_port}", "KB_INBOX": "/data/inbox"}
    containers: list[Container] = []
    processes: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen:
        container = Container(runner, tag, data, cache)
        containers.append(container)
        log_file = (workdir / f"{name}.log").open("w")
        process = subprocess.Popen(container.command(argv, {**env, **(extra or {})}), stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    def once(argv: list[str], extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        container = Container(runner, tag, data, cache)
        containers.append(container)
        return subprocess.run(container.command(argv, {**env, **(extra or {})}), capture_output=True, text=True)

    try:
        log(f"Chroma server from the image on 127.0.0.1:{chroma_port}")
        start("chroma", ["chroma", "run", "--path", "/data/chroma", "--host", "127.0.0.1", "--port", str(chroma_port)])
        wait_for(lambda: urllib.request.urlopen(f"{env['KB_CHROMA_URL']}/api/v2/heartbeat", timeout=5).status == 200,
                 f"the Chroma server (log: {workdir / 'chroma.log'})", timeout=120)

        log("ingest worker from the image; the image's sample library dropped into its inbox")
        started = time.monotonic()
        start("worker", ["python", "-m", "ingest", "--worker"])
        copied = once(["sh", "-c", "cp -r /app/data/samples/. /data/inbox/ && ls /data/inbox"])
        samples = copied.stdout.split()
        if copied.returncode != 0 or not samples:
            raise SystemExit(f"FAILED: copying the samples into the inbox: {copied.stdout} {copied.stderr}")
        log(f"inbox: {', '.join(samples)}")

        def inbox_done() -> bool:
            files = [f for job in job_table(data) if job["label"].startswith("inbox") for f in job["files"]]
            return len(files) >= len(samples) and all(f["state"] in ("done", "failed") for f in files)

        wait_for(inbox_done, f"the worker to ingest the inbox (log: {workdir / 'worker.log'})", timeout=900)
        ingest_seconds = time.monotonic() - started
        files = [f for job in job_table(data) for f in job["files"]]
        for f in files:
            log(f"  {f['rel']}: {f['state']} ({f['result']}, {f['chunks']} chunks)")
        added = sum(f["state"] == "done" for f in files)
        chunks = sum(f["chunks"] for f in files)
        if not added:
            raise SystemExit("FAILED: the worker added no sample")
        health = once(["python", "-m", "ingest", "--worker-health"])
        if health.returncode != 0:
            raise SystemExit(f"FAILED: the worker's health check: {health.stdout} {health.stderr}")

        log(f"app from the image on 127.0.0.1:{port}")
        app_env = {"STREAMLIT_SERVER_ADDRESS": "127.0.0.1", "STREAMLIT_SERVER_PORT": str(port)}
        started = time.monotonic()
        start("app", ["streamlit", "run", "streamlit_app.py"], app_env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200,
                 f"{url}/_stcore/health (log: {workdir / 'app.log'})", timeout=300)
        startup_seconds = time.monotonic() - started
        probe = once(inspect_healthcheck(runner, tag), app_env)
        if probe.returncode != 0:
            raise SystemExit(f"FAILED: the image's HEALTHCHECK command failed: {probe.stderr[-1000:]}")
        log("health check passed; asking through the Ask page")
        started = time.monotonic()
        shown = ask_in_browser(url, workdir)
        answer_seconds = time.monotonic() - started
        answer = shown[shown.find(QUESTION):][:600]
        log(f"cited answer:\n{answer}")
        return {"added": added, "files": len(samples), "chunks": chunks, "ingest_seconds": ingest_seconds,
                "startup_seconds": startup_seconds, "answer_seconds": answer_seconds, "answer": answer}
    finally:
        for process in reversed(processes):
            stop(process)
        for container in containers:
            container.remove()
        if os.environ.get("KEEP_IMAGE_TEST"):
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def inspect_healthcheck(runner: str, tag: str) -> list[str]:
    """The image's own HEALTHCHECK command (buildah run does not apply it: we run it ourselves)."""
    if runner == "docker":
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", tag],
                             capture_output=True, text=True, check=True).stdout
        test_cmd = json.loads(out)["Test"]
    else:
        out = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True,
                             check=True).stdout
        info = json.loads(out)
        test_cmd = (info.get("Docker", {}).get("config", {}).get("Healthcheck") or {}).get("Test")
    if not test_cmd or test_cmd[0] != "CMD":
        raise SystemExit(f"FAILED: the image has no exec-form HEALTHCHECK (found {test_cmd!r})")
    return test_cmd[1:]


def record(built: dict, tested: dict | None) -> None:
    """Keep the measured numbers in docs/deploy.md, section 'Image, measured'."""
    from bench.report import machine, markdown_table, write_section

    rows = [["image", f"{built['tag']} ({built['flavour']} flavour)"], ["builder", built["builder"]],
            ["build time", f"{built['seconds']:.0f} s"], ["image size", f"{built['bytes'] / 1e9:.2f} GB"]]
    if tested:
        rows += [["sample library through the worker's inbox (ocr engine, Chroma server)",
                  f"{tested['added']} of {tested['files']} files, {tested['chunks']} chunks, "
                  f"{tested['ingest_seconds']:.0f} s"],
                 ["app start to healthy", f"{tested['startup_seconds']:.0f} s"],
                 ["question over HTTP to a cited answer (browser)", f"{tested['answer_seconds']:.0f} s"]]
    if tested:
        what = (f"`make image-test`, {datetime.datetime.now():%Y-%m-%d %H:%M}: builds the image and runs the team "
                "topology from it as processes: a Chroma server, an ingest worker (the sample library is dropped "
                "into its inbox), the app; runs the image's HEALTHCHECK command and the worker's, and asks "
                f"\"{QUESTION}\" in a browser until the answer cites `{CITATION}…`.")
    else:  # `make image`: a build only, nothing was run from the image
        what = f"`make image`, {datetime.datetime.now():%Y-%m-%d %H:%M}: builds the image only."
    body = (what + " A build with cached layers is faster; the first one downloads the wheels.\n\n"
            + markdown_table(["what", "measured"], rows))
    write_section("Image, measured", body, path=DEPLOY_MD, where=machine())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image")
    parser.add_argument("action", choices=["build", "test"])
    parser.add_argument("--tag", default="seekframe:latest")
    parser.add_argument("--flavour", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--port", type=int, default=8599)
    args = parser.parse_args()
    built = build(args.tag, args.flavour)
    tested = test(built, args.port) if args.action == "test" else None
    record(built, tested)
    log("PASSED" if tested else "built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
