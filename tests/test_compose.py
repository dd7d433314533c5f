"""docker-compose.yml: closed by default (no default secret, loopback-only ports but the Airflow
UI, no Prometheus lifecycle API), every alert receiver exists, pinned images, starts without a
GPU (profile), valid for docker-compose (with and without `--profile gpu`, refused with the
message when .env lacks a secret), Airflow wiring, files it mounts exist, and every ${VAR} it
reads is documented in .env.example.

Each policy check is a function returning the problems it finds; the tests run them on the real
files (no problems) and on deliberately broken copies (each check must catch its breakage)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DEV_OVERRIDE = REPO / "docker/compose.dev.yml"
ALERTMANAGER = REPO / "include/prometheus/alertmanager.yml"
PROMETHEUS = REPO / "include/prometheus/prometheus.yml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
ONE_SHOT = {"airflow-init", "create-bucket"}
# Services whose host ports may listen on every interface: the Airflow UI (FAB login) only.
PUBLIC_ALLOWED = {"airflow-apiserver"}
# Variables that hold secrets (or the login name that goes with one): never a default.
SECRET_VARS = {"AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GRAFANA_ADMIN_PASSWORD",
               "AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD"}
# Environment keys whose value is a credential: must come from a required ${VAR:?...}.
SECRET_ENV_KEY = re.compile(r"PASSWORD|SECRET|FERNET|JWT|ACCESS_KEY|SQL_ALCHEMY_CONN|"
                            r"RESULT_BACKEND|ROOT_USER")
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)((?::?[-?])[^}]*)?\}")


def _env_example_values(text: str) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in text.splitlines()
                if ln and not ln.startswith("#") and "=" in ln)


def _resolve_defaults(value: str) -> str:
    """${VAR:-default} -> default, any other ${VAR...} -> VAR (for parsing ports and images)."""
    return VAR_RE.sub(lambda m: (m.group(2) or "")[2:] if (m.group(2) or "").startswith(":-")
                      else (m.group(2) or "")[1:] if (m.group(2) or "").startswith("-")
                      else m.group(1), value)


# --------------------------------------------------------------------------- the checks
def default_secret_problems(text: str, compose: dict, env_example: str) -> list[str]:
    problems = []
    for m in VAR_RE.finditer(text):
        if m.group(1) in SECRET_VARS and not (m.group(2) or "").startswith(":?"):
            problems.append(f"${{{m.group(1)}{m.group(2) or ''}}}: a secret needs ${{VAR:?...}}")
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in items:
            if SECRET_ENV_KEY.search(key):
                refs = VAR_RE.findall(str(value))
                if not refs or any(not mod.startswith(":?") for _, mod in refs):
                    problems.append(f"{name}: {key}={value!r} is not a required ${{VAR:?...}}")
    for var, value in _env_example_values(env_example).items():
        if var in SECRET_VARS - {"AIRFLOW_ADMIN_USER", "AWS_ACCESS_KEY_ID"} and value.strip():
            problems.append(f".env.example ships a value for secret {var}")
    return problems


def _host_bindings(svc: dict) -> list[str]:
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):  # long syntax
            if p.get("published") is not None:
                out.append(str(p.get("host_ip") or "0.0.0.0"))
            continue
        parts = _resolve_defaults(str(p)).split(":")
        out.append(parts[0] if len(parts) == 3 else "0.0.0.0")  # no IP: every interface
    return out


def public_binding_problems(compose: dict, allowed: set[str] = PUBLIC_ALLOWED) -> list[str]:
    problems = []
    for name, svc in compose["services"].items():
        for ip in _host_bindings(svc):
            if ip not in ("127.0.0.1", "::1", "localhost") and name not in allowed:
                problems.append(f"{name} publishes a port on {ip} (allowed: {sorted(allowed)})")
    return problems


def lifecycle_problems(compose: dict) -> list[str]:
    problems = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command") or []
        words = cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]
        if any(w.startswith("--web.enable-lifecycle") for w in words):
            problems.append(f"{name}: --web.enable-lifecycle exposes /-/quit and /-/reload")
    return problems


def receiver_problems(alertmanager: dict, prometheus: dict, compose: dict) -> list[str]:
    services = set(compose["services"])
    problems = []
    for rec in alertmanager.get("receivers", []):
        configs = [c for k, v in rec.items() if k.endswith("_configs") for c in v]
        if not configs:
            problems.append(f"receiver {rec['name']} has no configs (alerts go nowhere)")
        for c in configs:
            url = c.get("url") or c.get("api_url")
            if url:
                host = urlsplit(url).hostname
                if host not in services:
                    problems.append(f"receiver {rec['name']}: {url} -> no service {host!r}")
    targets = [t for am in prometheus["alerting"]["alertmanagers"] for sc in am["static_configs"]
               for t in sc["targets"]]
    targets += [t for job in prometheus["scrape_configs"] for sc in job["static_configs"]
                for t in sc["targets"]]
    for t in targets:
        host = t.split(":")[0]
        if host != "localhost" and host not in services:
            problems.append(f"prometheus target {t} -> no service {host!r}")
    return problems


def unpinned_image_problems(compose: dict) -> list[str]:
    problems = []
    for name, svc in compose["services"].items():
        image = _resolve_defaults(str(svc.get("image", "")))
        if "@sha256:" in image:
            continue
        last = image.split("/")[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else ""
        if not tag or tag == "latest" or not re.search(r"\d", tag):
            problems.append(f"{name}: image {svc.get('image')!r} is not pinned to a version")
    return problems


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # resolves anchors and << merge keys


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _all_problems(text: str, am_text: str, env_text: str) -> dict[str, list[str]]:
    c = yaml.safe_load(text)
    return {
        "secret": default_secret_problems(text, c, env_text),
        "binding": public_binding_problems(c),
        "lifecycle": lifecycle_problems(c),
        "receiver": receiver_problems(yaml.safe_load(am_text), yaml.safe_load(PROMETHEUS.read_text()),
                                      c),
        "image": unpinned_image_problems(c),
    }


def test_the_real_stack_passes_every_check():
    problems = _all_problems(COMPOSE.read_text(), ALERTMANAGER.read_text(), ENV_EXAMPLE.read_text())
    assert problems == {k: [] for k in problems}


BROKEN = {  # name: (check expected to fire, file, old, new)
    "default-jwt": ("secret", "compose", "${AIRFLOW_JWT_SECRET:?set AIRFLOW_JWT_SECRET in .env}",
                    "${AIRFLOW_JWT_SECRET:-atft-dev-jwt-secret-change-me}"),
    "literal-grafana-password": ("secret", "compose",
                                 "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set "
                                 "GRAFANA_ADMIN_PASSWORD in .env}",
                                 "GF_SECURITY_ADMIN_PASSWORD: admin"),
    "env-example-secret": ("secret", "env", "\nAIRFLOW_JWT_SECRET=\n",
                           "\nAIRFLOW_JWT_SECRET=atft-dev-jwt-secret\n"),
    "implicit-all-interfaces": ("binding", "compose", '"127.0.0.1:${ATFT_PUSHGATEWAY_PORT:-9091}:9091"',
                                '"${ATFT_PUSHGATEWAY_PORT:-9091}:9091"'),
    "explicit-0.0.0.0": ("binding", "compose", '"127.0.0.1:${ATFT_S3_PORT:-9000}:9000"',
                         '"0.0.0.0:${ATFT_S3_PORT:-9000}:9000"'),
    "lifecycle": ("lifecycle", "compose", '"--storage.tsdb.retention.time=30d"]',
                  '"--storage.tsdb.retention.time=30d", "--web.enable-lifecycle"]'),
    "receiver-without-service": ("receiver", "am", "http://alert-receiver:8080/atft/critical",
                                 "http://pager-bridge:8080/atft/critical"),
    "receiver-service-removed": ("receiver", "compose", "  alert-receiver:\n", "  alert-logger:\n"),
    "latest-tag": ("image", "compose", "prom/pushgateway:v1.10.0", "prom/pushgateway:latest"),
    "no-tag": ("image", "compose", "image: redis:7.4.1-bookworm", "image: redis"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_check_catches_a_broken_copy(case):
    check, which, old, new = BROKEN[case]
    texts = {"compose": COMPOSE.read_text(), "am": ALERTMANAGER.read_text(),
             "env": ENV_EXAMPLE.read_text()}
    assert texts[which].count(old) >= 1, f"{case}: the real file changed, update the mutation"
    texts[which] = texts[which].replace(old, new)
    if case == "receiver-service-removed":  # keep the copy loadable: nothing depends on it
        texts["compose"] = texts["compose"].replace(
            "    depends_on:\n      alert-receiver:\n        condition: service_healthy\n", "")
    problems = _all_problems(texts["compose"], texts["am"], texts["env"])
    assert problems[check], f"{case}: the {check} check missed it"
    assert all(not v for k, v in problems.items() if k != check), problems


# --------------------------------------------------------------------------- docker-compose
def _compose_exe() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (required under CI)")
        pytest.skip("docker-compose not installed")
    return exe


def _env_file(tmp_path: Path, drop: str | None = None) -> Path:
    values = _env_example_values(ENV_EXAMPLE.read_text())
    for var in SECRET_VARS:
        values[var] = f"test-{var.lower()}-value"
    values.pop(drop, None) if drop else None
    p = tmp_path / "test.env"
    p.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return p


def _compose_config(tmp_path: Path, *args: str, drop: str | None = None,
                    files: tuple[Path, ...] = (COMPOSE,)) -> subprocess.CompletedProcess:
    cmd = [_compose_exe(), "--project-directory", str(REPO), "--env-file",
           str(_env_file(tmp_path, drop))]
    for f in files:
        cmd += ["-f", str(f)]
    # a clean environment: shell variables would override the env file
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                               "HOME": str(tmp_path), "COMPOSE_PROJECT_NAME": "atft-test"})


@pytest.mark.parametrize("profile", [(), ("--profile", "gpu")], ids=["plain", "gpu"])
def test_docker_compose_config_is_valid(tmp_path, profile):
    proc = _compose_config(tmp_path, *profile, "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_dev_override_is_valid_and_the_only_place_of_simple_auth(tmp_path, services):
    proc = _compose_config(tmp_path, "config", files=(COMPOSE, DEV_OVERRIDE))
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(proc.stdout)["services"]
    for name in AIRFLOW_SERVICES:
        assert merged[name]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"].endswith(
            "SimpleAuthManager"), name
        assert services[name]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == \
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager", name
    assert "SimpleAuthManager" not in COMPOSE.read_text().split("services:", 1)[1]


@pytest.mark.parametrize("secret", [  # ~2 s per docker-compose v1 run: one fast, the rest slow
    s if s == "AIRFLOW_JWT_SECRET" else pytest.param(s, marks=pytest.mark.slow)
    for s in sorted(SECRET_VARS)])
def test_a_missing_secret_stops_compose_with_the_message(tmp_path, secret):
    proc = _compose_config(tmp_path, "config", "-q", drop=secret)
    assert proc.returncode != 0
    assert f"set {secret} in .env" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- wiring
def test_the_whole_stack_is_there(services):
    expected = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "create-bucket", "pushgateway",
                                   "prometheus", "alertmanager", "statsd-exporter", "grafana",
                                   "alert-receiver", "node-exporter"}
    assert expected == set(services)
    # MinIO, pinned to the release whose conditional-write evidence the header comment cites
    assert services["minio"]["image"] == "minio/minio:RELEASE.2025-09-07T16-13-09Z"
    assert "RELEASE.2025-09-07T16-13-09Z" in COMPOSE.read_text().split("x-airflow-env")[0]
    for name in AIRFLOW_SERVICES:
        assert "3.3.2" in services[name]["image"], name


def test_starts_on_a_plain_machine(services):
    profiled = {n for n, s in services.items() if s.get("profiles")}
    assert profiled == {"airflow-worker-gpu"}
    gpu = services["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["args"]["TORCH_FLAVOR"] != "cpu"
    assert gpu["command"] == ["bash", "/opt/atft/docker/gpu-worker.sh"]
    assert "./docker/gpu-worker.sh:/opt/atft/docker/gpu-worker.sh:ro" in gpu["volumes"]
    script = (REPO / "docker/gpu-worker.sh").read_text()
    assert "torch.cuda.is_available()" in script and "torch.version.cuda" in script
    assert "exec airflow celery worker --queues gpu --concurrency 1" in script
    assert "torch.cuda.is_available()" in gpu["healthcheck"]["test"][1]
    cpu = services["airflow-worker"]
    assert cpu["build"]["args"]["TORCH_FLAVOR"] == "cpu" and "deploy" not in cpu
    # without the GPU worker the CPU worker serves queue gpu (the default and .env.example)
    assert "${AIRFLOW_WORKER_QUEUES:-default,gpu}" in cpu["command"]
    assert _env_example_values(ENV_EXAMPLE.read_text())["AIRFLOW_WORKER_QUEUES"] == "default,gpu"


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
        assert {"postgres", "redis", "airflow-init"} <= set(services[name]["depends_on"]), name
    assert "create-bucket" in services["airflow-init"]["depends_on"]
    assert "minio" in services["create-bucket"]["depends_on"]
    assert "alert-receiver" in services["alertmanager"]["depends_on"]


def test_airflow_env_statsd_auth_and_atft_endpoints(services):
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "true", name
        assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter", name
        assert env["AIRFLOW__METRICS__STATSD_PORT"] == "9125", name
        assert env["ATFT_REGISTRY"] == "s3://${ATFT_BUCKET:-atft}/registry", name
        assert env["AWS_ENDPOINT_URL"] == "${ATFT_S3_ENDPOINT_URL:-http://minio:9000}", name
        assert env["ATFT_PUSHGATEWAY_URL"] == "http://pushgateway:9091", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".FabAuthManager"), name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/var"} <= mounts, name
    assert "--statsd.mapping-config=/etc/statsd/statsd_mapping.yml" in \
        services["statsd-exporter"]["command"]


def test_s3_identity_bucket_and_endpoint_come_from_env(services):
    minio = services["minio"]["environment"]
    assert minio["MINIO_ROOT_USER"] == "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID in .env}"
    assert minio["MINIO_ROOT_PASSWORD"] == \
        "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY in .env}"
    bucket = services["create-bucket"]["environment"]
    airflow = services["airflow-worker"]["environment"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION"):
        assert bucket[key] == airflow[key], key
    assert bucket["BUCKET"] == "${ATFT_BUCKET:-atft}"
    assert not (REPO / "docker/seaweedfs").exists()  # no identity file with fixed keys


def test_uid_changes_work(services):
    init = services["airflow-init"]
    assert init["user"] == "0:0" and init["command"] == ["bash", "/opt/atft/docker/airflow-init.sh"]
    assert init["environment"]["AIRFLOW_UID"] == "${AIRFLOW_UID:-50000}"
    script = (REPO / "docker/airflow-init.sh").read_text()
    assert 'chown -R "${AIRFLOW_UID}:0" "$VAR" "$LOGS"' in script
    assert 'chmod -R g+rwX "$VAR" "$LOGS"' in script
    assert "VAR=/opt/airflow/var" in script and "LOGS=/opt/airflow/logs" in script
    assert "airflow users create --username \"$AIRFLOW_ADMIN_USER\"" in script
    assert "airflow pools import /opt/atft/include/airflow/pools.json" in script
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["user"] == "${AIRFLOW_UID:-50000}:0", name
    assert "chmod -R g+rwX /opt/airflow/var" in (REPO / "docker/airflow.Dockerfile").read_text()


def test_alert_receiver_and_pushgateway_persistence(services):
    rec = services["alert-receiver"]
    assert rec["command"] == ["python", "/app/receiver.py", "8080"] and not rec.get("ports")
    assert (REPO / "docker/alert-receiver/receiver.py").is_file()
    pg = services["pushgateway"]
    assert pg["user"] == "65534:65534"
    (vol,) = pg["volumes"]
    assert vol == "pushgateway-state:/pushgateway"  # the image's nobody-owned directory
    assert "--persistence.file=/pushgateway/state.db" in pg["command"]


def test_mounted_files_and_build_inputs_exist(services):
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), (name, src)
        if "build" in svc:
            assert (REPO / svc["build"]["dockerfile"]).is_file(), name
    assert "./include/prometheus/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]


def test_dockerfile_installs_the_project_with_the_lock_a_torch_flavour_and_fab():
    text = (REPO / "docker/airflow.Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", text, re.M)
    assert "ARG TORCH_FLAVOR=cpu" in text
    assert "download.pytorch.org/whl/${TORCH_FLAVOR}" in text
    assert "-c /opt/atft/requirements/lock-py311.txt" in text
    assert re.search(r"^ARG FAB_PROVIDER_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert '"apache-airflow-providers-fab==${FAB_PROVIDER_VERSION}"' in text
    # a CUDA flavour without a CUDA torch build fails the build
    assert 'if [ "${TORCH_FLAVOR}" != "cpu" ]' in text and "torch.version.cuda" in text
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
    used = set()
    for f in (COMPOSE, DEV_OVERRIDE):
        used |= {m.group(1) for m in VAR_RE.finditer(f.read_text())}
    documented = set(_env_example_values(ENV_EXAMPLE.read_text()))
    assert used, "no variables found: the regex is broken"
    assert used <= documented, sorted(used - documented)
    assert SECRET_VARS <= used
