"""docker-compose.yml: valid for docker-compose, pinned images, healthchecks, wiring of the
Airflow services (StatsD, atft endpoints, GPU queue/reservation), files it mounts exist, and
every ${VAR} it reads is documented in .env.example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
ONE_SHOT = {"airflow-init", "create-bucket"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves anchors and << merge keys


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def test_docker_compose_config_is_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (required under CI)")
        pytest.skip("docker-compose not installed")
    proc = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COMPOSE_PROJECT_NAME": "atft-test"})
    assert proc.returncode == 0, proc.stderr


def test_the_whole_stack_is_there(services):
    expected = AIRFLOW_SERVICES | {"postgres", "redis", "seaweedfs", "create-bucket", "pushgateway",
                                   "prometheus", "alertmanager", "statsd-exporter", "grafana"}
    assert expected <= set(services)


def test_images_are_pinned(services):
    for name, svc in services.items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and "${" not in tag.split("}")[-1], (name, image)
        if name in AIRFLOW_SERVICES:
            assert "3.3.2" in image, (name, image)
        else:
            assert re.search(r"\d", tag), (name, image)  # a version, not a moving name
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")


def test_healthchecks_and_start_order(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
        else:
            assert "healthcheck" in svc and svc["healthcheck"]["test"], name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond == {"condition": want}, (name, dep, cond)
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert {"postgres", "redis", "airflow-init"} <= set(deps), name
    assert "create-bucket" in services["airflow-init"]["depends_on"]
    assert "seaweedfs" in services["create-bucket"]["depends_on"]
    assert "airflow pools set gpu" in services["airflow-init"]["command"][0]


def test_airflow_env_statsd_and_atft_endpoints(services):
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "true", name
        assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter", name
        assert env["AIRFLOW__METRICS__STATSD_PORT"] == "9125", name
        assert env["ATFT_REGISTRY"].startswith("s3://"), name
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333", name
        assert env["ATFT_PUSHGATEWAY_URL"] == "http://pushgateway:9091", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/var"} <= mounts, name
    assert "--statsd.mapping-config=/etc/statsd/statsd_mapping.yml" in \
        services["statsd-exporter"]["command"]


def test_gpu_worker_serves_the_gpu_queue_with_a_device_reservation(services):
    gpu = services["airflow-worker-gpu"]
    assert "--queues gpu" in gpu["command"] and "--concurrency 1" in gpu["command"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["TORCH_FLAVOR"] != "cpu"
    cpu = services["airflow-worker"]
    assert "gpu" not in cpu["command"].replace("${AIRFLOW_WORKER_QUEUES:-default}", "default")
    assert cpu["build"]["args"]["TORCH_FLAVOR"] == "cpu"
    assert "deploy" not in cpu


def test_mounted_files_and_build_inputs_exist(services):
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), (name, src)
        if "build" in svc:
            assert (REPO / svc["build"]["dockerfile"]).is_file(), name
    prom = services["prometheus"]["volumes"]
    assert "./include/prometheus/rules:/etc/prometheus/rules:ro" in prom


def test_dockerfile_installs_the_project_with_the_lock_and_a_torch_flavour():
    text = (REPO / "docker/airflow.Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", text, re.M)
    assert "ARG TORCH_FLAVOR=cpu" in text
    assert "download.pytorch.org/whl/${TORCH_FLAVOR}" in text
    assert "-c /opt/atft/requirements/lock-py311.txt" in text
    ignore = [ln for ln in (REPO / "docker/airflow.Dockerfile.dockerignore").read_text().splitlines()
              if ln and not ln.startswith("#")]
    assert ignore[0] == "*"  # deny by default: never send .venv/ or var/ as build context
    sources = [p for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M) for p in src.split()]
    assert "atft_core" in sources and "pyproject.toml" in sources
    for path in sources:
        if not path.endswith("*"):
            assert (REPO / path).exists(), path
            allowed = f"!{path}/**" if (REPO / path).is_dir() else f"!{path}"
            assert allowed in ignore, f"{path} is copied but excluded from the build context"


def test_every_compose_variable_is_documented_in_env_example():
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?::?-[^}]*)?\}", COMPOSE.read_text()))
    documented = {ln.split("=", 1)[0] for ln in (REPO / ".env.example").read_text().splitlines()
                  if ln and not ln.startswith("#") and "=" in ln}
    assert used, "no variables found: the regex is broken"
    assert used <= documented, sorted(used - documented)


def test_s3_dev_keys_match_the_seaweedfs_identity():
    import json

    ident = json.loads((REPO / "docker/seaweedfs/s3.json").read_text())["identities"][0]
    cred = ident["credentials"][0]
    env = dict(ln.split("=", 1) for ln in (REPO / ".env.example").read_text().splitlines()
               if ln and not ln.startswith("#") and "=" in ln)
    assert env["AWS_ACCESS_KEY_ID"] == cred["accessKey"]
    assert env["AWS_SECRET_ACCESS_KEY"] == cred["secretKey"]
    assert f"AWS_ACCESS_KEY_ID:-{cred['accessKey']}" in COMPOSE.read_text()
