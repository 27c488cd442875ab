"""A Schema Registry client: the Confluent REST API (Confluent Schema Registry, Apicurio's ``/apis/ccompat/v7``,
Redpanda, Karapace), the few calls kingest needs, with the standard library's HTTP client.

- ``schema(id)``: the schema a record's wire-format header names (``GET /schemas/ids/{id}``), cached for the life
  of the process: an id never changes its schema. ``None`` when the registry does not know the id (404): the
  record is then a bad record, settled by ``records.on_error``.
- ``subjects(id)``: the subjects that hold it (``GET /schemas/ids/{id}/versions``), for the Parquet footer;
  best effort.
- ``latest(subject)``: for ``kingest check``.

A registry that does not answer, or answers 5xx, is waited for up to ``retry_seconds`` (saying so once), as kingest
waits for Kafka and S3; then ``RegistryUnavailable``. A registry that refuses the credentials (401, 403) fails at
once: waiting cannot fix that. The password of ``basic_auth`` is never part of a message.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import SetupError

if TYPE_CHECKING:
    from .config import SchemaRegistryConfig

log = logging.getLogger("kingest.registry")

_CONTENT = "application/vnd.schemaregistry.v1+json"


class RegistryUnavailable(SetupError):
    """The schema registry does not answer (retryable: waited for up to retry_seconds)."""

    retryable = True


@dataclass(frozen=True)
class RegisteredSchema:
    """A schema as the registry gives it: its id, type (AVRO, JSON, PROTOBUF) and text."""

    id: int
    type: str
    text: str
    references: tuple[Any, ...] = ()

    def parsed(self) -> Any:
        return json.loads(self.text)


@dataclass
class Registry:
    url: str
    basic_auth: str | None = None  # user:password
    ca_file: str | None = None
    retry_seconds: float = 300.0
    timeout: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    _cache: dict[int, RegisteredSchema] = field(default_factory=dict, repr=False)
    _subjects: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.username is not None and self.basic_auth is None:
            # http://user:password@host/...: the credentials go in the header, never in a printed URL
            user = urllib.parse.unquote(parts.username)
            self.basic_auth = f"{user}:{urllib.parse.unquote(parts.password or '')}"
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    @classmethod
    def from_config(cls, settings: SchemaRegistryConfig, **overrides: Any) -> Registry:
        """The registry of ``records.schema_registry`` (``overrides``: e.g. a shorter wait for `kingest check`)."""
        options: dict[str, Any] = {
            "basic_auth": settings.basic_auth,
            "ca_file": settings.ca_file,
            "retry_seconds": settings.retry_seconds,
        }
        return cls(settings.url, **{**options, **overrides})

    @property
    def shown(self) -> str:
        """The URL, as messages show it (credentials never are)."""
        return self.url

    # ------------------------------------------------------------------------------------------- the calls

    def schema(self, schema_id: int) -> RegisteredSchema | None:
        """The schema of ``schema_id``, or None when the registry does not know it."""
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
        body = self._get(f"/schemas/ids/{schema_id}")
        found = None
        if body is not None:
            found = RegisteredSchema(
                schema_id,
                str(body.get("schemaType") or "AVRO").upper(),
                str(body["schema"]),
                tuple(body.get("references") or ()),
            )
        if found is not None:  # an unknown id is asked again: it may be registered since (or replicated late)
            with self._lock:
                self._cache[schema_id] = found
        return found

    def subjects(self, schema_id: int) -> tuple[str, ...]:
        """The subjects that hold ``schema_id`` (empty if the registry cannot say)."""
        with self._lock:
            if schema_id in self._subjects:
                return self._subjects[schema_id]
        found: tuple[str, ...] = ()
        try:
            # /versions ({subject, version} pairs) is the call both Confluent and Apicurio answer; Apicurio 3.0.9
            # answers /subjects with an empty body
            body = self._get(f"/schemas/ids/{schema_id}/versions", retry=False)
            if isinstance(body, list):
                found = tuple(sorted({str(v["subject"]) for v in body if isinstance(v, dict) and "subject" in v}))
        except (SetupError, ValueError, TypeError):
            pass
        with self._lock:
            self._subjects[schema_id] = found
        return found

    def references(self, schema: RegisteredSchema) -> list[tuple[str, str]]:
        """The (import name, schema text) of each schema ``schema`` references, theirs first (Protobuf imports
        registered as other subjects)."""
        out: list[tuple[str, str]] = []
        seen: set[tuple[str, int]] = set()

        def visit(references: tuple[Any, ...]) -> None:
            for ref in references:
                key = (str(ref["subject"]), int(ref["version"]))
                if key in seen:
                    continue
                seen.add(key)
                subject = urllib.parse.quote(key[0], safe="")
                body = self._get(f"/subjects/{subject}/versions/{key[1]}")
                if body is None:
                    raise SetupError(
                        f"the schema registry at {self.shown} has no version {key[1]} of subject {key[0]}, which "
                        "a schema references"
                    )
                visit(tuple(body.get("references") or ()))
                out.append((str(ref["name"]), str(body["schema"])))

        visit(schema.references)
        return out

    def latest(self, subject: str) -> RegisteredSchema | None:
        """The latest version of ``subject``, or None when there is no such subject."""
        body = self._get(f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest")
        if body is None:
            return None
        return RegisteredSchema(int(body["id"]), str(body.get("schemaType") or "AVRO").upper(), str(body["schema"]))

    # ----------------------------------------------------------------------------------------------- HTTP

    def _get(self, path: str, retry: bool = True) -> Any:
        """The JSON body of GET ``path``; None for a 404. Waits out a registry that does not answer."""
        started = time.monotonic()
        said = False
        delay = 0.2
        while True:
            try:
                return self._request(path)
            except RegistryUnavailable as exc:
                waited = time.monotonic() - started
                if not retry or waited + delay > self.retry_seconds:
                    how_long = f" for {waited:.0f} s" if waited >= 1 else ""
                    raise RegistryUnavailable(
                        f"the schema registry at {self.shown} did not answer{how_long}: {exc}",
                        "Check records.schema_registry.url and that the registry is up; kingest waits for it up to "
                        "records.schema_registry.retry_seconds. Nothing past the records it could not decode was "
                        "committed.",
                    ) from None
                if not said:
                    log.warning(
                        "the schema registry at %s does not answer (%s): waiting up to %.0f s",
                        self.shown,
                        exc,
                        self.retry_seconds,
                    )
                    said = True
                self.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _request(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Accept": _CONTENT + ", application/json"})
        if self.basic_auth:
            token = base64.b64encode(self.basic_auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=self.ca_file) if self.url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                raise SetupError(
                    f"the schema registry at {self.shown} refused kingest's request ({exc.code}: {detail})",
                    "Check records.schema_registry.basic_auth (user:password, given as ${VAR}).",
                ) from None
            if exc.code >= 500 or exc.code == 429:
                raise RegistryUnavailable(f"HTTP {exc.code}: {detail}") from None
            raise SetupError(
                f"the schema registry at {self.shown} answered GET {path} with {exc.code}: {detail}",
                "Check records.schema_registry.url: it is the registry's base URL (for Apicurio, ending in "
                "/apis/ccompat/v7).",
            ) from None
        except ssl.SSLError as exc:
            raise SetupError(
                f"TLS with the schema registry at {self.shown} failed: {exc.reason or exc}",
                "Give its CA as records.schema_registry.ca_file.",
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                raise SetupError(
                    f"TLS with the schema registry at {self.shown} failed: {reason.reason or reason}",
                    "Give its CA as records.schema_registry.ca_file.",
                ) from None
            raise RegistryUnavailable(str(reason)) from None
        except ValueError as exc:  # not JSON: not a registry
            raise SetupError(
                f"{self.shown}{path} did not answer as a schema registry does ({exc})",
                "Check records.schema_registry.url: it is the registry's base URL (for Apicurio, ending in "
                "/apis/ccompat/v7).",
            ) from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return str(body.get("message") or exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
