"""The lake: local disk, S3 or memory, through one fsspec code path. The one module that imports fsspec.

Two ways to put an object, both all-or-nothing:

- ``put``: replace. On S3 a single PUT is atomic. On local disk, a hidden temporary file in the same folder is
  written, fsynced and renamed over the name, then the folder is fsynced; a reader never sees half a file.
- ``create``: exclusive create, for the offsets manifest. On S3 a PUT with ``If-None-Match: *``; on local disk
  the fsynced temporary file is hard-linked to the name (``link`` fails when the name exists). Two writers
  racing for one name: exactly one wins.

Transient store errors (connection refused or reset, timeouts, 5xx) are retried with exponential backoff for up
to ``retry_seconds``; errors that retrying cannot fix (missing bucket, access denied) are raised at once.

On S3, the save path's requests (``put``, ``create``, ``read``) go through obstore (Rust's object_store, the
client of delta-rs and DataFusion) when the settings are ones both clients read alike (see ``_direct_s3``):
measured, s3fs/aiobotocore spend ~2 ms of CPU a request, all on fsspec's one event-loop thread, holding the GIL;
obstore ~0.25 ms, outside it. Listings and deletes stay on s3fs.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import fsspec

from . import crash
from .errors import LakeUnavailable, SetupError

log = logging.getLogger("kingest.lake")
T = TypeVar("T")
_PERMANENT = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


class Lake:
    _direct: _DirectS3 | None = None  # S3's save-path requests through obstore (see _direct_s3), else None

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        retry_seconds: float = 300.0,
        *,
        connections: int = 0,
    ):
        """``connections``: requests the caller may have in flight at once (the save lanes); on S3 the client's
        connection pool is made at least that large (botocore keeps 10 by default), unless the user set it in
        ``storage_options: {config_kwargs: {max_pool_connections: N}}``."""
        self.url = url.rstrip("/")
        options = dict(storage_options or {})
        client_kwargs = options.get("client_kwargs")
        client_kwargs = client_kwargs if isinstance(client_kwargs, Mapping) else {}
        self.endpoint = str(options.get("endpoint_url") or client_kwargs.get("endpoint_url") or "")
        verify = client_kwargs.get("verify")
        self.ca_file = verify if isinstance(verify, str) else None  # the CA botocore trusts alone, when given
        if isinstance(verify, str) and not os.path.isfile(verify):
            raise SetupError(
                f"lake.storage_options.client_kwargs.verify: no file at {verify}",
                "Set it to the CA certificate (PEM) that signed the S3 endpoint's certificate, readable by this user.",
            )
        s3 = self.url.split("://", 1)[0] in ("s3", "s3a")
        if s3:
            self._direct = _direct_s3(self.url, options)
        if connections > 10 and s3:
            config_kwargs = dict(options.get("config_kwargs") or {})
            config_kwargs.setdefault("max_pool_connections", connections)
            options["config_kwargs"] = config_kwargs
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise SetupError(
                f"lake.path {url!r} cannot be opened: {exc}",
                "Use a local folder or s3://bucket/prefix; check lake.storage_options.",
            ) from None
        self.root = root.rstrip("/")
        if self.url.split("://", 1)[0] in ("s3", "s3a"):
            _expect_continue_for_large_puts_only(self.fs)
        protocol = self.fs.protocol
        self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        self.local = self.protocol in ("file", "local")
        if self.local:
            self.root = os.path.abspath(self.root)
        self.retry_seconds = retry_seconds
        self.retries = 0  # store calls that failed and were retried (for the metrics)
        self._reported = 0.0

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, rel: str = "") -> str:
        """A path as a user would write it (no credentials ever: those live in storage_options)."""
        return f"{self.url}/{rel}" if rel else self.url

    # ---------------------------------------------------------------------------------- retries

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with exponential backoff (0.2 s doubling up to 10 s) while the store fails in a way
        that waiting can fix: connection refused or reset, timeouts, 5xx. Gives up with LakeUnavailable after
        ``retry_seconds``. Errors that retrying cannot fix (missing bucket or object, access denied, a taken
        name) are raised at once. The user is told when the store stops answering and when it answers again."""
        delay, started = 0.2, time.monotonic()
        deadline = started + self.retry_seconds
        failing_since: float | None = None
        while True:
            try:
                result = call()
            except _PERMANENT:
                raise
            except Exception as exc:  # botocore/aiohttp connection errors are not all OSErrors
                refused = _certificate_refused(exc)
                if refused:
                    raise _tls_error(self, refused) from None
                if not _is_transient(exc):
                    raise
                now = time.monotonic()
                if now + delay > deadline:
                    raise LakeUnavailable(
                        f"the lake at {self.display()} did not answer for {now - started:.0f}s ({what}): "
                        f"{_describe(exc)}",
                        "Check that the store is up and reachable (lake.storage_options endpoint_url); nothing "
                        "past the last committed batch was committed, so running again resumes from there.",
                    ) from None
                self.retries += 1
                if failing_since is None or now - self._reported >= 30.0:
                    self._reported = now
                    log.warning(
                        "the lake at %s does not answer (%s: %s); retrying for up to %.0fs more",
                        self.display(),
                        what,
                        _describe(exc),
                        deadline - now,
                    )
                failing_since = failing_since or now
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if failing_since is not None:
                waited = time.monotonic() - failing_since
                log.warning("the lake at %s answers again after %.0fs", self.display(), waited)
            return result

    # ---------------------------------------------------------------------------------- writing

    def put(self, rel: str, data: bytes, *, crash_midway: bool = False) -> None:
        """Write ``data`` under ``rel``, replacing any object there, all or nothing."""
        if self.local:
            path = self.full(rel)
            try:
                tmp = self._write_tmp(path, data, crash_midway)
                try:
                    os.replace(tmp, path)
                except OSError:
                    _remove_quietly(tmp)
                    raise
                _fsync_dir(os.path.dirname(path))
            except OSError as exc:  # disk full, permissions, I/O error: nothing was renamed into place
                raise _local_write_error(self, exc) from None
            return
        if crash_midway:
            crash.point("mid-write")
        if self._direct is not None:
            self._retry(f"writing {rel}", lambda: self._put_direct(rel, data))
            return
        self._retry(f"writing {rel}", lambda: self.fs.pipe_file(self.full(rel), data))

    def create(self, rel: str, data: bytes, *, crash_point: str | None = None) -> bool:
        """Create ``rel`` holding ``data`` only if nothing is there yet. False when the name was taken."""
        if self.local:
            path = self.full(rel)
            tmp = self._write_tmp(path, data, False)
            if crash_point:
                crash.point(crash_point)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            _fsync_dir(os.path.dirname(path))
            return True
        if crash_point:
            crash.point(crash_point)
        attempts = 0

        def create_once() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                if self._direct is not None:
                    self._put_direct(rel, data, create=True)
                else:
                    self.fs.pipe_file(self.full(rel), data, mode="create")
                return True
            except FileExistsError:
                pass
            except OSError as exc:
                if not _is_precondition_failed(exc):
                    raise
            # Taken. If an earlier attempt of ours went through before its answer was lost, the object is ours.
            return attempts > 1 and self.read(rel) == data

        return self._retry(f"creating {rel}", create_once)

    def _put_direct(self, rel: str, data: bytes, *, create: bool = False) -> None:
        """S3 through obstore (see _direct_s3); s3fs's cached listings forget the name, as its own PUT does."""
        assert self._direct is not None
        self._direct.put(self.full(rel), data, create=create)
        self.fs.invalidate_cache(self.fs._strip_protocol(self.full(rel)))

    def _write_tmp(self, path: str, data: bytes, crash_midway: bool) -> str:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        # Hidden (leading dot) and not ending in .parquet: pyarrow, DuckDB and Spark all skip it.
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                if crash_midway:
                    half = len(data) // 2
                    handle.write(data[:half])
                    handle.flush()
                    os.fsync(handle.fileno())
                    crash.point("mid-write")
                    handle.write(data[half:])
                else:
                    handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            _remove_quietly(tmp)  # a write that failed part-way leaves nothing behind (a crash leaves it hidden)
            raise
        return tmp

    # ---------------------------------------------------------------------------------- reading

    def read(self, rel: str) -> bytes | None:
        direct = self._direct
        try:
            if direct is not None:
                return self._retry(f"reading {rel}", lambda: direct.get(self.full(rel)))
            return self._retry(f"reading {rel}", lambda: self.fs.cat_file(self.full(rel)))
        except FileNotFoundError:
            return None

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """Read several objects at once (concurrently on S3). Missing ones are left out; any other failure of one
        of them (a timeout, a reset) fails the call, and is retried like any store error: a caller must never take
        an object it could not read for one that does not exist."""
        rels = list(rels)
        if not rels:
            return {}
        paths = [self.full(r) for r in rels]

        def cat() -> dict[str, Any]:
            got = self.fs.cat(paths, on_error="return")
            for value in got.values():
                if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                    raise value
            return {p: v for p, v in got.items() if not isinstance(v, BaseException)}

        got = self._retry("reading state", cat)
        by_path = {self.fs._strip_protocol(p): v for p, v in got.items()}
        out = {}
        for rel, path in zip(rels, paths, strict=True):
            value = by_path.get(self.fs._strip_protocol(path))
            if value is not None:
                out[rel] = value
        return out

    def listdir(self, rel: str) -> dict[str, int]:
        """Names (not paths) of the files directly under folder ``rel``, with their sizes. Missing: empty."""
        try:
            entries = self._retry(f"listing {rel}", lambda: self.fs.ls(self.full(rel), detail=True, refresh=True))
        except FileNotFoundError:
            return {}
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e["type"] == "file"
        }

    def find(self, rel: str = "") -> dict[str, int]:
        """Every file below folder ``rel``, as paths relative to the lake root, with sizes."""
        return {name: int(info.get("size") or 0) for name, info in self._find(rel).items()}

    def find_dated(self, rel: str = "") -> dict[str, tuple[int, float]]:
        """Like ``find``, with each file's last-modified time (seconds since the epoch) beside its size."""
        return {name: (int(info.get("size") or 0), _modified(info)) for name, info in self._find(rel).items()}

    def _find(self, rel: str) -> dict[str, dict[str, Any]]:
        base = self.fs._strip_protocol(self.full(rel)).rstrip("/")
        root = self.fs._strip_protocol(self.root).rstrip("/")
        self.fs.invalidate_cache(base)  # s3fs caches listings per process: another writer may have changed them
        try:
            found = self._retry(f"listing {rel or 'the lake'}", lambda: self.fs.find(base, detail=True))
        except FileNotFoundError:
            return {}
        return {name[len(root) + 1 :]: info for name, info in found.items()}

    def delete(self, rels: Iterable[str]) -> None:
        rels = list(rels)
        if self.protocol in ("s3", "s3a") and len(rels) > 1:
            self._delete_in_bulk(rels)
            return
        for rel in rels:
            path = self.full(rel)
            try:
                self._retry(f"deleting {rel}", lambda: self.fs.rm_file(path))  # noqa: B023 (called at once)
            except FileNotFoundError:
                pass

    def _delete_in_bulk(self, rels: list[str]) -> None:
        """S3: up to 1,000 objects a request (DeleteObjects) rather than one request each: recovery at a
        checkpoint deletes a record per version since the last one. Missing objects are no error (S3's own
        rule); an object the store refuses to delete is retried alone, as ``delete`` would."""
        for start in range(0, len(rels), 1000):
            chunk = rels[start : start + 1000]
            paths = [self.fs._strip_protocol(self.full(rel)) for rel in chunk]
            bucket = paths[0].split("/", 1)[0]
            objects = [{"Key": p.split("/", 1)[1]} for p in paths]
            answer = self._retry(
                f"deleting {len(chunk)} objects",
                lambda: self.fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True}),  # noqa: B023
            )
            for path in paths:
                self.fs.invalidate_cache(path)
            refused = {e.get("Key") for e in answer.get("Errors") or ()}
            for rel, path in zip(chunk, paths, strict=True):
                if path.split("/", 1)[1] in refused:
                    self._retry(f"deleting {rel}", lambda: self.fs.rm_file(self.full(rel)))  # noqa: B023

    # ---------------------------------------------------------------------------------- checks

    def _check_certificate(self) -> None:
        """An https endpoint_url with a CA file (client_kwargs.verify): one TLS handshake with that file, the one
        botocore then uses alone, so that a refused certificate is said at once (botocore retries it like a
        network error, ~10 s, before _certificate_refused sees it). Without a CA file botocore resolves its own
        trust store (AWS_CA_BUNDLE, ~/.aws/config, REQUESTS_CA_BUNDLE, certifi): no second guess here."""
        if not self.endpoint.startswith("https://") or self.ca_file is None:
            return
        parsed = urllib.parse.urlsplit(self.endpoint)
        ctx = ssl.create_default_context(cafile=self.ca_file)
        try:
            with (
                socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=parsed.hostname),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise _tls_error(self, exc.verify_message or str(exc)) from None
        except OSError:
            pass  # not a certificate matter: the requests that follow say what it is

    def probe(self) -> bool:
        """Check the lake is writable before anything is consumed: write, read and delete a probe object.
        Returns whether the store enforces exclusive create (required for exactly-once)."""
        rel = f"_kingest/probe-{uuid.uuid4().hex}"
        saved, self.retry_seconds = self.retry_seconds, min(self.retry_seconds, 10.0)
        try:
            if self.local:
                os.makedirs(self.root, exist_ok=True)
            elif self.protocol in ("s3", "s3a", "gcs", "gs", "abfs", "az"):
                # Some stores (SeaweedFS, MinIO in some modes) create a missing bucket on the first PUT; real S3
                # refuses. Either way a missing bucket is a mistake in lake.path, so say so before writing.
                bucket = self.root.split("/", 1)[0]
                self._check_certificate()
                self.fs.invalidate_cache()
                # Not fs.exists(): it answers False for wrong credentials and for an endpoint that does not answer.
                try:
                    self._retry("checking the bucket", lambda: self.fs.info(bucket))
                except FileNotFoundError:
                    raise SetupError(
                        f"the lake at {self.display()} is not writable: bucket {bucket!r} does not exist",
                        "Create the bucket first, or fix the bucket name in lake.path.",
                    ) from None
                except PermissionError:
                    pass  # no right to look at the bucket itself (or wrong credentials): the probe write tells
            self.put(rel, b"probe")
            exclusive = not self.create(rel, b"probe-again")
            self.delete([rel])
            return exclusive
        except (LakeUnavailable, SetupError):
            raise
        except Exception as exc:
            raise SetupError(
                f"the lake at {self.display()} is not writable: {_describe(exc)}",
                _hint_for(self, exc),
            ) from None
        finally:
            self.retry_seconds = saved


def _certificate_refused(exc: BaseException) -> str | None:
    """The reason, when the store's TLS certificate was refused (botocore: "SSL validation failed ...
    CERTIFICATE_VERIFY_FAILED] certificate verify failed: <reason>"): waiting does not fix that."""
    for error in (exc, exc.__cause__, exc.__context__, getattr(exc, "error", None)):
        text = str(error) if error is not None else ""
        if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(error, ssl.SSLCertVerificationError):
            found = re.search(r"certificate verify failed: ([^(']+)", text)
            return (found.group(1) if found else text).strip().rstrip(".")
    return None


def _tls_error(lake: Lake, reason: str) -> LakeUnavailable:
    if "mismatch" in reason or "not valid for" in reason:
        hint = (
            "Use in lake.storage_options.endpoint_url a host name the certificate names, or give the endpoint a "
            "certificate for this name."
        )
    elif "expired" in reason or "not yet valid" in reason:
        hint = "The endpoint needs a valid certificate; also check this machine's clock (`date`)."
    else:
        hint = (
            "Set lake.storage_options: {client_kwargs: {verify: /path/to/ca.pem}} to the CA certificate (PEM) that "
            "signed the endpoint's certificate (or AWS_CA_BUNDLE)."
        )
    error = LakeUnavailable(
        f"the lake at {lake.display()}: the TLS certificate of {lake.endpoint or 'the store'} is refused: {reason}",
        hint,
    )
    error.retryable = False  # not until the certificate or the settings change
    return error


def _is_precondition_failed(exc: BaseException) -> bool:
    text = str(exc)
    return "PreconditionFailed" in text or "Precondition Failed" in text or "At least one of the pre-conditions" in text


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: the store did not answer, or answered "try again". s3fs turns most S3 errors into
    OSError subclasses (permanent ones into FileNotFoundError / PermissionError, handled before this); botocore
    and aiohttp connection errors reach us as they are, sometimes wrapped in botocore's HTTPClientError."""
    if _is_precondition_failed(exc):
        return False
    if isinstance(exc, OSError):
        return getattr(exc, "errno", None) not in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
    for error in (exc, getattr(exc, "error", None), exc.__cause__, exc.__context__):
        if error is None:
            continue
        name = type(error).__name__
        if any(word in name for word in ("Connection", "Timeout", "ServerDisconnected", "ClientPayload")):
            return True
    text = str(exc)
    return any(code in text for code in ("ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout"))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _local_write_error(lake: Lake, exc: OSError) -> LakeUnavailable:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "full" if exc.errno == errno.ENOSPC else "over its quota"
        error = LakeUnavailable(
            f"the disk under the lake at {lake.display()} is {full} ({_describe(exc)})",
            f"Free space on the file system of {lake.root} (df -h {lake.root}), then run again: nothing past the "
            "last saved batch was committed, so the run resumes from there.",
        )
        error.retryable = False  # not until someone frees space
        return error
    return LakeUnavailable(f"the lake at {lake.display()} is not writable: {_describe(exc)}", _hint_for(lake, exc))


def _hint_for(lake: Lake, exc: BaseException) -> str:
    if lake.local:
        return f"Check that {lake.root} can be created and written by this user, or choose another lake.path."
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in str(exc) or "does not exist" in str(exc):
        return "Create the bucket first, or fix the bucket name in lake.path."
    if isinstance(exc, PermissionError) or "AccessDenied" in str(exc) or "Forbidden" in str(exc):
        return "Check the credentials (lake.storage_options key/secret, or the AWS environment)."
    return "Check lake.path and lake.storage_options (endpoint_url, key, secret)."


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _modified(info: Mapping[str, Any]) -> float:
    """A listing entry's last-modified time: ``LastModified`` (S3, a datetime), ``mtime`` (local disk) or
    ``created`` (memory). Unknown: now (a file of unknown age is never old enough to be collected)."""
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if value is not None and hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value) if isinstance(value, int | float) else time.time()


class _DirectS3:
    """Whole-object PUT (plain, or exclusive with ``If-None-Match: *``) and GET of one bucket through obstore, its
    errors turned into the ones the s3fs path raises, so that ``Lake._retry`` and the messages treat both alike:
    FileNotFoundError (no such key or bucket), PermissionError (refused: the store's own message), FileExistsError
    (exclusive create of a taken name: 412 only), ValueError (a path S3 cannot hold), and ConnectionError for the
    rest (no answer, a reset, 5xx, 409: retried). Its own retries are off: ``Lake._retry`` decides how long to
    wait, and says so. One PUT a file, never multipart (all or nothing, as a single PUT is). A request may take
    60 s, a body of 1 MiB or more 10 minutes (obstore's timeout runs to the end of the body: a 64 MiB file on a
    slow uplink)."""

    def __init__(self, store: Any, large: Any, bucket: str) -> None:
        self.store = store
        self.large = large
        self.bucket = bucket

    def _key(self, path: str) -> str:
        return path.split("/", 1)[1] if "/" in path else ""

    def put(self, path: str, data: bytes, *, create: bool = False) -> None:
        import obstore

        store = self.large if len(data) >= LARGE_BODY else self.store
        try:
            obstore.put(store, self._key(path), data, mode="create" if create else "overwrite", use_multipart=False)
        except Exception as exc:  # noqa: BLE001 (translated below)
            raise _translate(exc, path, create=create) from None

    def get(self, path: str) -> bytes:
        import obstore

        try:
            return bytes(obstore.get(self.large, self._key(path)).bytes())
        except Exception as exc:  # noqa: BLE001 (translated below)
            raise _translate(exc, path) from None


LARGE_BODY = 1 << 20
# S3 error codes that say the credentials are refused (403s, and a 400 for an expired session token)
_REFUSED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)


def _translate(exc: Exception, path: str, *, create: bool = False) -> Exception:
    from obstore import exceptions as errors

    text = str(exc)
    message = re.search(r"<Code>([^<]*)</Code>\s*<Message>([^<]*)</Message>", text)
    status = re.search(r"status code: (\d{3})", text)
    code = message.group(1) if message else ""
    said = message.group(2) if message else text.splitlines()[0][:300]
    if isinstance(exc, FileNotFoundError | errors.NotFoundError):
        bucket = code == "NoSuchBucket"
        return FileNotFoundError(f"{said} ({'bucket of ' if bucket else ''}{path})")
    if isinstance(exc, errors.AlreadyExistsError | errors.PreconditionError):
        if create and status is not None and status.group(1) == "412":
            return FileExistsError(f"{path} exists")
        # 409 (ConditionalRequestConflict: another write of the name in progress; OperationAborted): AWS says retry
        return ConnectionError(f"{said} ({path})")
    if isinstance(exc, errors.PermissionDeniedError | errors.UnauthenticatedError) or code in _REFUSED:
        return PermissionError(said)
    if isinstance(exc, errors.InvalidPathError):
        return ValueError(f"{path} is not a valid S3 key: {said}")
    return ConnectionError(said if message else _describe(exc))


# storage_options that both clients read the same way (anything else: s3fs alone, as before)
_DIRECT_OPTIONS = frozenset({"key", "secret", "token", "endpoint_url", "client_kwargs", "config_kwargs"})


def _direct_s3(url: str, options: Mapping[str, Any]) -> _DirectS3 | None:
    """The obstore client for ``url``'s bucket, when the user's ``storage_options`` mean the same to obstore as to
    s3fs/botocore; None (s3fs for everything) otherwise, or with KINGEST_S3_CLIENT=s3fs. Alike means: explicit
    keys (or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment, no profile), a known region (or an
    endpoint_url: any region), the same addressing (an endpoint at an IP address or localhost, or given as
    config_kwargs.s3.addressing_style; AWS itself: virtual-hosted), an http endpoint_url or AWS itself (over
    https to another endpoint the two may trust different roots), and nothing else set (server-side encryption,
    requester pays, profiles, proxies, a CA file...: those need botocore)."""
    if os.environ.get("KINGEST_S3_CLIENT", "").lower() == "s3fs":
        return None
    try:
        from obstore.store import S3Store
    except ImportError:
        return None
    if set(options) - _DIRECT_OPTIONS:
        return None
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    if not isinstance(client, Mapping) or set(client) - {"endpoint_url", "region_name"}:
        return None
    if not isinstance(config, Mapping) or set(config) - {"max_pool_connections", "s3"}:
        return None
    s3 = config.get("s3") or {}
    if not isinstance(s3, Mapping) or set(s3) - {"addressing_style"}:
        return None
    endpoint = options.get("endpoint_url") or client.get("endpoint_url") or None
    key, secret, token = options.get("key"), options.get("secret"), options.get("token")
    if key is None and secret is None and token is None:
        env = os.environ
        if env.get("AWS_PROFILE") or not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
            return None
        key, secret, token = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
    if not isinstance(key, str) or not isinstance(secret, str) or not isinstance(token, str | None):
        return None
    region = client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    style = s3.get("addressing_style")
    if endpoint is not None:
        # Plain http only: over https the two clients may trust different roots (certifi, the system's, a bundle)
        if not isinstance(endpoint, str) or not endpoint.startswith("http://"):
            return None
        if style is None:
            try:
                ipaddress.ip_address(urllib.parse.urlsplit(endpoint).hostname or "")
            except ValueError:
                if urllib.parse.urlsplit(endpoint).hostname != "localhost":
                    return None  # botocore's own choice of addressing for a named endpoint is not obvious: keep it
            style = "path"
        region = region or "us-east-1"
    elif region is None:
        return None  # botocore finds the bucket's region itself (redirects): keep it
    if style not in (None, "path", "virtual"):
        return None
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    try:
        settings: dict[str, Any] = {"access_key_id": key, "secret_access_key": secret, "region": region}
        if endpoint is not None:
            settings["endpoint"] = endpoint
        if token is not None:
            settings["session_token"] = token
        stores = [
            S3Store(
                bucket,
                **settings,
                virtual_hosted_style_request=style != "path",
                client_options={
                    "allow_http": endpoint is not None,  # an endpoint_url here is http:// (see above)
                    "timeout": timeout,
                    "connect_timeout": "10s",
                },
                retry_config={"max_retries": 0, "retry_timeout": datetime.timedelta(seconds=60)},
            )
            for timeout in ("60s", "600s")
        ]
    except Exception as exc:  # noqa: BLE001 (s3fs then: it says what is wrong with the settings)
        log.debug("S3 requests through s3fs only: obstore refused the settings: %s", exc)
        return None
    return _DirectS3(stores[0], stores[1], bucket)


EXPECT_CONTINUE_FROM = 1 << 20  # bytes: a PUT body at least this large asks the server first


def _expect_continue_for_large_puts_only(fs: Any) -> None:
    """botocore sends every PUT with ``Expect: 100-continue`` and waits for the server's go-ahead before the body:
    a second round trip per PUT (measured: 2 turns per PUT through the latency proxy, 1 without). It only spares
    sending a body the server would refuse, which is worth a round trip for a large data file, not for a pending
    record or a manifest version of a few hundred bytes. So: only for bodies of EXPECT_CONTINUE_FROM bytes or
    more. Best effort: if s3fs or botocore change, nothing breaks, PUTs keep their two round trips."""
    try:
        from botocore.handlers import add_expect_header
        from botocore.utils import determine_content_length
        from fsspec.asyn import sync

        def large_only(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
            body = params.get("body")
            size = determine_content_length(body) if body is not None else None
            if size is None or size >= EXPECT_CONTINUE_FROM:
                add_expect_header(model, params, **kwargs)

        client = sync(fs.loop, fs.set_session)
        client.meta.events.unregister("before-call.s3", add_expect_header)
        client.meta.events.register("before-call.s3", large_only, unique_id="kingest-expect-large-only")
    except Exception as exc:  # noqa: BLE001 (an optimisation: never a reason not to open the lake)
        log.debug("could not limit Expect: 100-continue to large PUTs: %s", exc)
