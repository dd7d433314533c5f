"""``s3://`` object store through boto3: see :mod:`atft_core.registry.store` for the guarantees
(create-only / compare-and-swap via conditional headers, a total deadline on every call)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from atft_core.registry.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    NotFoundError,
    PreconditionError,
    RegistryError,
)
from atft_core.registry.names import check_name
from atft_core.registry.storebase import MB, ListedObject, ObjectInfo, check_key, is_immutable


def _parse_airflow_aws_conn(raw: str) -> dict[str, Any]:
    """Read ``AIRFLOW_CONN_AWS_DEFAULT`` (JSON or URI form) without importing Airflow.

    Returns a dict with any of endpoint_url, region_name, aws_access_key_id,
    aws_secret_access_key found (``extra.endpoint_url`` or ``extra.service_config.s3.endpoint_url``;
    login/password are the access key pair, as in the Amazon provider).
    """
    raw = raw.strip()
    login = password = None
    extra: dict[str, Any] = {}
    if raw.startswith("{"):
        conn = json.loads(raw)
        login, password = conn.get("login"), conn.get("password")
        ex = conn.get("extra") or {}
        extra = json.loads(ex) if isinstance(ex, str) else dict(ex)
        if not extra.get("endpoint_url") and conn.get("host"):
            host = str(conn["host"])
            port = conn.get("port")
            if "://" not in host:
                host = f"{conn.get('schema') or 'http'}://{host}"
            extra.setdefault("endpoint_url", f"{host}:{port}" if port else host)
    else:
        parts = urlsplit(raw)
        login = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k == "__extra__":
                extra.update(json.loads(v))
            else:
                extra[k] = v
    endpoint = extra.get("endpoint_url") or (
        ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
    )
    out: dict[str, Any] = {}
    if endpoint:
        out["endpoint_url"] = endpoint
    if extra.get("region_name"):
        out["region_name"] = extra["region_name"]
    if login and password:
        out["aws_access_key_id"] = login
        out["aws_secret_access_key"] = password
    return out


def resolve_s3_settings(endpoint_url: str | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where to reach S3: explicit argument > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL >
    Airflow ``aws_default`` connection (env var) > AWS itself. Credentials: the standard boto3
    chain, unless only the Airflow connection carries a key pair. ``source`` says which won."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {}
    conn_raw = env.get("AIRFLOW_CONN_AWS_DEFAULT")
    conn = _parse_airflow_aws_conn(conn_raw) if conn_raw else {}
    if endpoint_url:
        settings.update(endpoint_url=endpoint_url, source="argument")
    elif env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        settings.update(endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env["AWS_ENDPOINT_URL"],
                        source="AWS_ENDPOINT_URL")
    elif conn.get("endpoint_url"):
        settings.update(endpoint_url=conn["endpoint_url"], source="AIRFLOW_CONN_AWS_DEFAULT")
    else:
        settings.update(endpoint_url=None, source="aws")
    if conn.get("region_name") and not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        settings["region_name"] = conn["region_name"]
    if "aws_access_key_id" in conn and not env.get("AWS_ACCESS_KEY_ID"):
        settings["aws_access_key_id"] = conn["aws_access_key_id"]
        settings["aws_secret_access_key"] = conn["aws_secret_access_key"]
    return settings


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def _botocore_session() -> Any:
    """A fresh botocore session (fresh credential resolution) sharing one service-model loader:
    parsing the S3 model costs ~0.3 s per session, the shared loader makes it ~0.05 s."""
    import botocore.loaders
    import botocore.session

    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        session = botocore.session.get_session()
        session.register_component("data_loader", _LOADER)
    return session


class S3Store:
    """``s3://bucket/prefix`` through boto3. See the module docstring for the guarantees.

    Args:
        bucket, prefix: location of the registry root.
        endpoint_url: overrides :func:`resolve_s3_settings`.
        multipart_threshold_mb / multipart_chunksize_mb / max_concurrency: transfer manager.
        checksum_algorithm: S3 integrity checksum sent with every upload ("SHA256" or "CRC32").
        deadline_s: total deadline of one call (retries included); transfers get it per part.
        connect_timeout_s / read_timeout_s / max_attempts: botocore per-attempt limits (capped
            by ``deadline_s``).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 multipart_threshold_mb: int = 8, multipart_chunksize_mb: int = 8,
                 max_concurrency: int = 4, checksum_algorithm: str = "SHA256",
                 deadline_s: float = 60.0, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 60.0, max_attempts: int = 4) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        if not deadline_s > 0:
            raise RegistryError(f"S3 deadline must be > 0 s, got {deadline_s}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        for p in self.prefix.split("/") if self.prefix else ():
            check_name(p, "S3 prefix component")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.settings = resolve_s3_settings(endpoint_url)
        self.deadline_s = float(deadline_s)
        kwargs = {k: v for k, v in self.settings.items() if k != "source" and v is not None}
        boto_cfg = BotoConfig(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=min(connect_timeout_s, self.deadline_s),
            read_timeout=min(read_timeout_s, self.deadline_s),
            s3={"addressing_style": "path"} if kwargs.get("endpoint_url") else {},
            max_pool_connections=max(10, max_concurrency * 2),
        )
        self.client = boto3.session.Session(botocore_session=_botocore_session()).client(
            "s3", config=boto_cfg, **kwargs)
        self.checksum_algorithm = checksum_algorithm
        self.part_bytes = multipart_chunksize_mb * MB
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_mb * MB,
            multipart_chunksize=self.part_bytes,
            max_concurrency=max_concurrency,
        )
        # s3transfer rejects IfNoneMatch as an upload argument: inject it for immutable keys.
        events = self.client.meta.events
        for op in ("PutObject", "CompleteMultipartUpload"):
            events.register(f"before-parameter-build.s3.{op}", self._force_create_only)
        self._local = threading.local()

    def describe(self) -> str:
        return f"S3 endpoint {self.settings.get('endpoint_url') or 'AWS (default endpoint)'}"

    # ------------------------------------------------------------- total deadline
    def _bounded(self, what: str, fn: Any, *, deadline_s: float | None = None) -> Any:
        """Run ``fn()`` (botocore calls) with a total deadline.

        (:func:`atft_core.deadline.call_with_deadline`: botocore's own timeouts are per read and
        multiply with retries; the abandoned thread ends at its next per-read timeout, capped by
        the deadline.)"""
        from atft_core.deadline import DeadlinePassed, call_with_deadline

        deadline = self.deadline_s if deadline_s is None else deadline_s
        try:
            return call_with_deadline(fn, deadline, name=f"atft-s3-{what.split()[0]}")
        except DeadlinePassed:
            raise BackendUnavailableError(
                f"{self.uri}: {self.describe()} gave no answer to {what} within the "
                f"{deadline:g} s deadline (registry.s3_deadline_s)") from None
        except Exception as err:
            raise self._translate(err, what) from None

    def _translate(self, err: BaseException, what: str) -> BaseException:
        """Transport and bucket-level failures -> one BackendUnavailableError line."""
        import botocore.exceptions as bx

        where = f"{self.uri}: {self.describe()}"
        if isinstance(err, bx.NoCredentialsError | bx.PartialCredentialsError):
            return BackendUnavailableError(f"{where}: no S3 credentials ({err}); set "
                                           "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if isinstance(err, bx.EndpointConnectionError | bx.ConnectionClosedError):
            return BackendUnavailableError(f"{where} is unreachable during {what}: {err}")
        if isinstance(err, bx.ConnectTimeoutError | bx.ReadTimeoutError):
            return BackendUnavailableError(f"{where} timed out during {what}: {err}")
        if isinstance(err, bx.ClientError):
            code = self._code(err)
            if code == "NoSuchBucket":
                return BackendUnavailableError(
                    f"{where}: bucket {self.bucket!r} does not exist (NoSuchBucket during {what})")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return BackendUnavailableError(f"{where} refused {what}: {code} (check the S3 "
                                               "keys and the bucket policy)")
        return err

    def _transfer_deadline(self, size: int) -> float:
        return self.deadline_s * max(1, -(-size // self.part_bytes))

    # ------------------------------------------------------------- keys
    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _force_create_only(self, params: dict[str, Any], **_: Any) -> None:
        key = params.get("Key", "")
        if is_immutable(self._rel(key)) and "IfMatch" not in params:
            params["IfNoneMatch"] = "*"

    @staticmethod
    def _code(err: BaseException) -> str:
        return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))

    def _raise_conditional(self, err: BaseException, key: str, if_match: str | None) -> None:
        code = self._code(err)
        if code in ("PreconditionFailed", "412"):
            if if_match is None:
                raise AlreadyExistsError(f"{self.uri}/{key} already exists (write-once)") from None
            raise PreconditionError(f"{self.uri}/{key} changed (If-Match {if_match})") from None
        if code in ("ConditionalRequestConflict", "409"):
            raise PreconditionError(f"{self.uri}/{key}: concurrent conditional write") from None
        if code in ("NoSuchKey", "404") and if_match is not None:
            raise PreconditionError(f"{self.uri}/{key} does not exist (If-Match)") from None
        raise err

    # ------------------------------------------------------------- objects
    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False,
                  if_match: str | None = None) -> str:
        from botocore.exceptions import ClientError

        full = self._full(key)
        if is_immutable(key) and if_match is not None:
            raise PreconditionError(f"{key} is immutable; If-Match writes are refused")
        kwargs: dict[str, Any] = {"ChecksumAlgorithm": self.checksum_algorithm}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            resp = self._bounded(f"PutObject {key}", lambda: self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, **kwargs))
        except ClientError as err:
            self._raise_conditional(err, key, if_match)
            raise
        return str(resp["ETag"])

    def _manager(self):
        from boto3.s3.transfer import create_transfer_manager

        return create_transfer_manager(self.client, self.transfer_config)

    def put_file(self, key: str, path: Path, *, sha256: str,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        from botocore.exceptions import ClientError

        full = self._full(key)
        extra = {"ChecksumAlgorithm": self.checksum_algorithm, "Metadata": {"sha256": sha256}}
        subscribers = [_bytes_subscriber(on_bytes)] if on_bytes is not None else None

        def upload() -> None:
            with self._manager() as tm:
                tm.upload(str(path), self.bucket, full, extra_args=extra, subscribers=subscribers).result()

        try:
            self._bounded(f"upload {key}", upload,
                          deadline_s=self._transfer_deadline(Path(path).stat().st_size))
        except ClientError as err:
            self._raise_conditional(err, key, None)
            raise

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        def get() -> tuple[bytes, str]:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
            with contextlib.closing(resp["Body"]) as body:
                return body.read(), str(resp["ETag"])

        try:
            return self._bounded(f"GetObject {key}", get)
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                raise NotFoundError(f"{self.uri}/{key} not found") from None
            raise

    def download(self, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        info = self.head(key)
        if info is None:
            raise NotFoundError(f"{self.uri}/{key} not found")

        def fetch() -> None:
            with self._manager() as tm:
                tm.download(self.bucket, self._full(key), str(dest)).result()

        try:
            self._bounded(f"download {key}", fetch, deadline_s=self._transfer_deadline(info.size))
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                raise NotFoundError(f"{self.uri}/{key} not found") from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            r = self._bounded(f"HeadObject {key}", lambda: self.client.head_object(
                Bucket=self.bucket, Key=self._full(key)))
        except ClientError as err:
            if self._code(err) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return ObjectInfo(key, int(r["ContentLength"]), str(r["ETag"]), dict(r.get("Metadata", {})))

    def _list_prefix(self, prefix: str) -> str:
        return self._full(prefix.rstrip("/")) + "/" if prefix else (
            f"{self.prefix}/" if self.prefix else "")

    def list_info(self, prefix: str) -> list[ListedObject]:
        full = self._list_prefix(prefix)

        def page(token: str | None) -> dict[str, Any]:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kw["ContinuationToken"] = token
            return self.client.list_objects_v2(**kw)

        out: list[ListedObject] = []
        token = None
        while True:  # one deadline per page (1000 keys)
            resp = self._bounded(f"ListObjectsV2 {full or '/'}", lambda t=token: page(t))
            out.extend(ListedObject(self._rel(o["Key"]), int(o.get("Size", 0)),
                                    o["LastModified"].timestamp())
                       for o in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                break
        return sorted(out, key=lambda o: o.key)

    def list_keys(self, prefix: str) -> list[str]:
        return [o.key for o in self.list_info(prefix)]

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._bounded(f"DeleteObject {key}", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=full))

    def list_leftovers(self, prefix: str) -> list[ListedObject]:
        """Unfinished multipart uploads (a killed publish of a large file) under ``prefix``."""
        full = self._list_prefix(prefix)
        resp = self._bounded(f"ListMultipartUploads {full}", lambda: self.client.list_multipart_uploads(
            Bucket=self.bucket, Prefix=full))
        return [ListedObject(self._rel(u["Key"]), 0, u["Initiated"].timestamp(),
                             upload_id=u["UploadId"]) for u in resp.get("Uploads", [])]

    def remove_leftover(self, item: ListedObject) -> None:
        assert item.upload_id is not None
        full = self._full(item.key)
        self._bounded(f"AbortMultipartUpload {item.key}", lambda: self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=full, UploadId=item.upload_id))



def _bytes_subscriber(on_bytes: Callable[[int], None]):
    """An s3transfer subscriber forwarding ``on_progress`` byte counts (a retried part reports
    negative bytes: passed on, so the total stays right). Built lazily: s3transfer is boto3's."""
    from s3transfer.subscribers import BaseSubscriber

    class BytesSubscriber(BaseSubscriber):
        def on_progress(self, future, bytes_transferred: int, **kwargs) -> None:
            on_bytes(bytes_transferred)

    return BytesSubscriber()
