"""compose.yaml against the Compose Specification's JSON schema, and what a team would notice running it.

The schema is vendored in deploy/compose-spec.json (source and licence in deploy/README.md). `docker compose
config` cannot run here; like it, the file is interpolated first (values from .env.example) and checked after.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker compose reads a .env file (a ` #` after a value starts a comment)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.split(" #")[0].strip()
    return values


def interpolate(node, env: dict[str, str]):
    if isinstance(node, str):
        return VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), node)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return env_file(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(env) -> dict:
    return interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()), env)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def active(compose: dict, profile: str) -> dict[str, dict]:
    """The services `docker compose --profile PROFILE up` starts."""
    return {name: s for name, s in compose["services"].items() if not s.get("profiles") or profile in s["profiles"]}


def test_compose_file_matches_the_compose_specification(compose, validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_misspelt_condition(compose, validator):
    broken = copy.deepcopy(compose)
    broken["services"]["app"]["depends_on"]["chroma"]["condition"] = "service_healty"
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_every_service_has_a_health_check_and_starts_after_healthy_dependencies(compose, profile):
    services = active(compose, profile)
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name} has no exec-form health check"
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] == "service_healthy", f"{name} starts before {dependency} is healthy"
            if rule.get("required", True):
                assert dependency in services, f"{name} needs {dependency}, which profile {profile} does not start"


def test_gpu_profile_serves_qwen3_vl_from_vllm_on_a_reserved_gpu(compose, env):
    services = active(compose, "gpu")
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "--trust-request-mm-kwargs" in vllm["command"]  # true video timestamps (README, Engines)
    assert vllm["command"][vllm["command"].index("--model") + 1] == env["KB_MODEL"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert any(v.startswith("models:") for v in vllm["volumes"])
    for name in ("app", "worker"):
        environment = services[name]["environment"]
        assert environment["KB_ENGINE"] == "openai"
        assert environment["KB_OPENAI_BASE_URL"] == "http://vllm:8000/v1"
        assert services[name]["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_cpu_profile_runs_without_vllm_or_a_gpu(compose):
    services = active(compose, "cpu")
    assert "vllm" not in services
    assert {"chroma", "app-cpu", "worker-cpu", "proxy"} <= set(services)
    assert all(s["environment"]["KB_ENGINE"] == "ocr" for n, s in services.items() if n in ("app-cpu", "worker-cpu"))
    assert not any("reservations" in s.get("deploy", {}).get("resources", {}) for s in services.values())


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_app_replicas_and_workers_share_one_knowledge_base_and_one_chroma_server(compose, profile):
    services = active(compose, profile)
    app, worker = (services[n] for n in (("app", "worker") if profile == "gpu" else ("app-cpu", "worker-cpu")))
    assert int(app["deploy"]["replicas"]) > 1
    assert worker["command"][:4] == ["python", "-m", "ingest", "--worker"]
    assert app["image"] == worker["image"]
    for service in (app, worker):
        assert "kb:/data/kb" in service["volumes"] and service["environment"]["KB_HOME"] == "/data/kb"
        assert service["environment"]["KB_CHROMA_URL"] == "http://chroma:8000"
        assert service["secrets"][0]["target"] == "/app/.streamlit/secrets.toml"  # never baked into the image
    assert "chroma:/data" in services["chroma"]["volumes"]
    assert {"kb", "chroma", "models"} <= set(compose["volumes"])  # named volumes: they outlive `compose down`
    # Several replicas behind one port: the proxy publishes it and keeps each session on its replica.
    assert services["proxy"]["ports"] == [f"{8080}:80"]
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "lb_policy cookie" in caddyfile and "dynamic a seekframe-app 8501" in caddyfile
    assert "seekframe-app" in app["networks"]["default"]["aliases"]


def final_stage(dockerfile: str) -> str:
    """The instructions of the image that is built: those after the last FROM."""
    return dockerfile[list(re.finditer(r"^FROM ", dockerfile, re.M))[-1].start():]


def test_the_image_runs_unprivileged_with_its_health_check_and_no_file_watcher():
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = final_stage(dockerfile)
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "/_stcore/health" in re.search(r"^HEALTHCHECK .*$", runtime, re.M).group(0)
    assert "STREAMLIT_SERVER_FILE_WATCHER_TYPE=none" in runtime
    assert re.search(r"^ARG FLAVOUR=gpu$", dockerfile, re.M)
    assert re.search(r'^VOLUME \["/data", "/cache"\]$', runtime, re.M)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    # The build context is only what the image needs: no venv, knowledge base, .env or secrets.
    assert "*" in ignored and not any(x in line for line in ignored if line.startswith("!")
                                      for x in (".venv", "data/kb", ".env", "secrets"))


def test_the_image_exports_the_embedders_graph_at_build_time():
    """The bundled embedder's ONNX graph is made while the image is built (kb/embed.py's install step), into the
    environment, so no container exports it at its first search (20-45 s, into /cache). It must run after the code
    is copied and before USER: the unprivileged user cannot write into /opt/seekframe."""
    runtime = final_stage((ROOT / "Dockerfile").read_text())
    export = re.search(r"^RUN python -m kb\.embed$", runtime, re.M)
    assert export, "the Dockerfile does not run `python -m kb.embed`"
    assert runtime.index("pip install -r /tmp/requirements.txt") < runtime.index("COPY --chown=root:root kb kb") \
        < export.start() < re.search(r"^USER ", runtime, re.M).start()
