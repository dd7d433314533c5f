#!/usr/bin/env bash
# airflow-init (docker-compose.yml): runs once as root before every other Airflow service.
#  1. the shared directories belong to AIRFLOW_UID (group 0, group-writable), as in the official
#     Airflow compose file, so any AIRFLOW_UID (e.g. `id -u`) can write runs, work and logs;
#  2. migrates the metadata DB (FAB tables included when the FAB auth manager is configured);
#  3. creates the admin login from .env (FAB) -- or the SimpleAuthManager password file in the
#     dev override (docker/compose.dev.yml);
#  4. creates the `gpu` pool (1 slot) that train / HPO-trial tasks use.
set -euo pipefail

: "${AIRFLOW_UID:?AIRFLOW_UID is not set}"
: "${AIRFLOW_ADMIN_USER:?set it in .env}"
: "${AIRFLOW_ADMIN_PASSWORD:?set it in .env}"

VAR=/opt/airflow/var
LOGS=/opt/airflow/logs
own() {
  chown -R "${AIRFLOW_UID}:0" "$VAR" "$LOGS"
  chmod -R g+rwX "$VAR" "$LOGS"
}

mkdir -p "$VAR/runs" "$VAR/work" "$VAR/metrics" "$VAR/hpo" "$VAR/registry-cache" "$LOGS"
own

airflow db migrate

case "${AIRFLOW__CORE__AUTH_MANAGER:-}" in
  *FabAuthManager)
    # `users create` leaves an existing user alone; reset-password makes .env the truth
    airflow users create --username "$AIRFLOW_ADMIN_USER" --password "$AIRFLOW_ADMIN_PASSWORD" \
      --firstname Admin --lastname ATFT --role Admin --email "${AIRFLOW_ADMIN_EMAIL:-admin@localhost}"
    airflow users reset-password --username "$AIRFLOW_ADMIN_USER" --password "$AIRFLOW_ADMIN_PASSWORD"
    ;;
  *SimpleAuthManager)
    : "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?dev override must set it}"
    python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as f:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
os.chmod(path, 0o640)
PY
    ;;
  *)
    echo "airflow-init: unknown auth manager '${AIRFLOW__CORE__AUTH_MANAGER:-}'" >&2
    exit 1
    ;;
esac

airflow pools import /opt/atft/include/airflow/pools.json  # the gpu pool (train, HPO trials)
own  # files the commands above created as root
airflow version
