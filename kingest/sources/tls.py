"""TLS to Kafka (`kafka.security_protocol: SSL | SASL_SSL`): the files checked before any client is made, and the
reason a handshake failed, found out by kingest itself, the same for both clients.

Why kingest looks for itself: neither client says what a user must fix. kafka-python retries a failed handshake
like a network error until the bootstrap timeout, then reports "Unable to bootstrap"; librdkafka says "broker
certificate could not be verified" whether the CA is unknown, the certificate expired or names another host,
and an encrypted key with a wrong password is "PEM lib" in both. So:

- ``check_files`` (before a client is made): each file the config names exists and is what it should be; the
  key opens with ``ssl_password`` and belongs to the certificate. Python's ``ssl`` would ask for an encrypted
  key's password on the terminal when none is given: the callback here refuses instead.
- ``diagnose`` (after a client reported a failed handshake): one TLS connection made with Python's ``ssl`` and
  the same settings, which names the cause (OpenSSL's verify code, or the alert the broker sent).
- ``tls_error``: the message and the hint for each cause, naming the setting and the file, never a secret.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kingest.config import KafkaConfig, SecurityProtocol
from kingest.errors import SetupError

Cause = Literal[
    "unknown-ca", "expired", "not-yet-valid", "wrong-host", "no-client-cert", "client-cert-refused", "not-tls", "other"
]

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code gives them
_UNKNOWN_CA = {2, 18, 19, 20, 21, 27, 28}  # unable to get issuer / self-signed / not trusted / rejected
_EXPIRED, _NOT_YET_VALID = 10, 9
_WRONG_HOST = {62, 63, 64}  # hostname, email, IP address mismatch


def uses_tls(config: KafkaConfig) -> bool:
    return config.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)


class _NoPassword(Exception):
    pass


def _refuse_prompt() -> str:
    raise _NoPassword


def context(config: KafkaConfig) -> ssl.SSLContext:
    """An SSL context with the config's files, as the clients build theirs; raises SetupError naming the setting
    and the file when one of them cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = config.ssl_check_hostname
    if config.ssl_cafile and Path(config.ssl_cafile).is_dir():
        if config.client != "confluent":
            raise SetupError(
                f"kafka.ssl_cafile ({config.ssl_cafile}) is a directory: kafka-python takes one PEM file",
                "Point kafka.ssl_cafile at the CA certificate file (librdkafka, kafka.client: confluent, also takes "
                "a directory of hashed certificates).",
            )
        ctx.load_verify_locations(capath=config.ssl_cafile)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(config, key)
        if key == "ssl_cafile" and path and Path(path).is_dir():
            continue
        if path is not None and not Path(path).is_file():
            raise SetupError(
                f"kafka.{key}: no file at {path}",
                f"Set kafka.{key} to the path of a PEM file readable by this user.",
            )
    if config.ssl_cafile and not Path(config.ssl_cafile).is_dir():
        try:
            ctx.load_verify_locations(config.ssl_cafile)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise SetupError(
                f"kafka.ssl_cafile ({config.ssl_cafile}) holds no usable CA certificate: {_short(exc)}",
                "Set kafka.ssl_cafile to the CA certificate(s) that signed the brokers' certificates, in PEM "
                "(-----BEGIN CERTIFICATE-----).",
            ) from None
    elif not config.ssl_cafile:
        ctx.load_default_certs()
    if config.ssl_keyfile and not config.ssl_certfile:
        raise SetupError(
            f"kafka.ssl_keyfile is set ({config.ssl_keyfile}) but kafka.ssl_certfile is not",
            "For mutual TLS set both: kafka.ssl_certfile (the client certificate) and kafka.ssl_keyfile (its key).",
        )
    if config.ssl_certfile:
        _load_client_certificate(ctx, config)
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, config: KafkaConfig) -> None:
    certfile, keyfile = config.ssl_certfile, config.ssl_keyfile
    key_where = f"kafka.ssl_keyfile ({keyfile})" if keyfile else f"the key in kafka.ssl_certfile ({certfile})"
    try:
        ctx.load_cert_chain(certfile or "", keyfile, password=config.ssl_password or _refuse_prompt)
    except _NoPassword:
        raise SetupError(
            f"{key_where} is encrypted and kafka.ssl_password is not set",
            "Set kafka.ssl_password to the key's password, from the environment: ssl_password: ${KEY_PASSWORD}.",
        ) from None
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise SetupError(
                f"{key_where} is not the key of the certificate in kafka.ssl_certfile ({certfile})",
                "Point kafka.ssl_keyfile at the private key the client certificate was made with.",
            ) from None
        if config.ssl_password and _is_encrypted(keyfile or certfile or ""):
            raise SetupError(
                f"{key_where} cannot be decrypted with kafka.ssl_password: not the password of this key",
                "Check kafka.ssl_password (or the environment variable it names).",
            ) from None
        raise SetupError(
            f"kafka.ssl_certfile ({certfile}) or {key_where} cannot be used: {_short(exc)}",
            "Both must be PEM: the certificate (-----BEGIN CERTIFICATE-----) and its private key "
            "(-----BEGIN PRIVATE KEY----- or -----BEGIN ENCRYPTED PRIVATE KEY-----).",
        ) from None


def _is_encrypted(path: str) -> bool:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return "ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text


def check_files(config: KafkaConfig) -> None:
    """Before a client is made: the TLS files the config names are usable (raises SetupError otherwise)."""
    if uses_tls(config):
        context(config)


@dataclass(frozen=True)
class Finding:
    cause: Cause
    detail: str


DEFAULT_PORT = 9092


def servers(config: KafkaConfig) -> list[tuple[str, int]]:
    """The bootstrap servers as (host, port), parsed as the clients do: an optional ``PROTOCOL://`` prefix, IPv6
    in brackets, the port 9092 when none is given. An entry that cannot be parsed is left out."""
    out = []
    for entry in config.bootstrap_servers:
        text = re.sub(r"^.*://", "", entry.strip())
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if bracketed:
            host, port = bracketed.group(1), bracketed.group(2)
        elif text.count(":") == 1:
            host, port = text.split(":")
        else:
            host, port = text, None  # a bare host, or a bare IPv6 address
        try:
            out.append((host, int(port) if port else DEFAULT_PORT))
        except ValueError:
            continue
    return out


def _display(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A minimal ApiVersions request (v0, correlation id 1, client id "kingest"): any Kafka listener answers it before
# authentication, so an answer is positive evidence of what the listener speaks.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, 7) + b"kingest"
_API_VERSIONS = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


def _answers_api_versions(conn: socket.socket) -> bool:
    """Send ApiVersions on ``conn`` and read the answer's header: True when a Kafka broker answered. A TLS alert
    the broker sent raises its SSLError, also when it closed the connection before the request was sent."""
    try:
        conn.sendall(_API_VERSIONS)
    except OSError:
        conn.recv(8)  # the alert that came first, if any, raises here
        raise
    header = b""
    while len(header) < 8:
        chunk = conn.recv(8 - len(header))
        if not chunk:
            return False
        header += chunk
    _, correlation = struct.unpack(">ii", header)
    return correlation == 1


def speaks_plain_kafka(server: tuple[str, int], timeout: float = 5.0) -> bool:
    """A plaintext Kafka listener at ``server`` (a PLAINTEXT or SASL_PLAINTEXT one): it answers ApiVersions
    without TLS."""
    try:
        with socket.create_connection(server, timeout=timeout) as raw:
            return _answers_api_versions(raw)
    except (OSError, struct.error):
        return False


def diagnose(config: KafkaConfig, server: tuple[str, int], timeout: float = 5.0) -> Finding | None:
    """One TLS connection to ``server`` with the config's settings, then an ApiVersions request over it: the cause
    of a failure, or None when nothing conclusive was found (the broker answered over TLS, or did not answer at
    all, or closed the connection without saying why: a broker restarting looks like that too)."""
    host, port = server
    ctx = context(config)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None  # not a TLS matter: the clients' own messages say the broker does not answer
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as conn:
            # The broker checks the client's certificate after the handshake (TLS 1.3): its refusal is an alert
            # on the first read, here the answer to ApiVersions.
            try:
                _answers_api_versions(conn)
            except ssl.SSLError as exc:
                # an alert names a refusal; a bare EOF or reset proves nothing
                return _alert(exc, config) if "alert" in str(exc).lower() else None
            return None
    except ssl.SSLCertVerificationError as exc:
        return _verify_failure(exc, host)
    except OSError as exc:  # ssl.SSLError too: an alert names a refusal; a cut handshake, only a plaintext answer
        if isinstance(exc, ssl.SSLError) and "alert" in str(exc).lower():
            return _alert(exc, config)
        return (
            Finding("not-tls", "it answers Kafka requests without TLS") if speaks_plain_kafka(server, timeout) else None
        )
    finally:
        raw.close()


def _verify_failure(exc: ssl.SSLCertVerificationError, host: str) -> Finding:
    code = exc.verify_code
    message = exc.verify_message or _short(exc)
    if code in _UNKNOWN_CA:
        return Finding("unknown-ca", message)
    if code == _EXPIRED:
        return Finding("expired", message)
    if code == _NOT_YET_VALID:
        return Finding("not-yet-valid", message)
    if code in _WRONG_HOST:
        return Finding("wrong-host", message)
    return Finding("other", message)


def _alert(exc: ssl.SSLError, config: KafkaConfig) -> Finding:
    text = _short(exc)
    name = re.search(r"alert ([a-z ]+)", text)
    text = f"the TLS alert '{name.group(1).strip()}'" if name else text
    refusals = ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN", "UNKNOWN_CA", "HANDSHAKE_FAILURE")
    if any(a in str(exc).upper() for a in refusals):
        return Finding("client-cert-refused" if config.ssl_certfile else "no-client-cert", text)
    return Finding("other", text)


def _short(exc: BaseException) -> str:
    """An ssl error as a user reads it: OpenSSL's verify message, or the text without "(_ssl.c:NNN)"."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc))


def tls_error(config: KafkaConfig, client_said: str = "") -> SetupError:
    """The error a user sees when a client reported a failed TLS connection to the brokers: the cause kingest
    found itself, else what the client said."""
    where = ", ".join(config.bootstrap_servers)
    return tls_problem(config) or SetupError(
        f"Kafka at {where}: the TLS connection failed: {client_said or 'no reason given'}",
        "Check kafka.security_protocol, kafka.ssl_cafile and, for mutual TLS, kafka.ssl_certfile and "
        "kafka.ssl_keyfile; --verbose shows the client's log.",
    )


def tls_problem(config: KafkaConfig) -> SetupError | None:
    """The TLS problem between this client and the first broker, as the error a user sees; None when a TLS
    connection made now succeeds (the failure is elsewhere: credentials, the network)."""
    for server in servers(config):
        finding = diagnose(config, server)
        if finding is not None:
            return _finding_error(config, server, finding)
    return None


def _finding_error(config: KafkaConfig, server: tuple[str, int], finding: Finding) -> SetupError:
    where, host = _display(server), server[0]
    ca = f"kafka.ssl_cafile ({config.ssl_cafile})" if config.ssl_cafile else "the system's CA certificates"
    detail = finding.detail
    match finding.cause:
        case "unknown-ca":
            return SetupError(
                f"Kafka at {where}: the broker's TLS certificate is not signed by a CA in {ca}: {detail}",
                "Set kafka.ssl_cafile to the CA certificate (PEM) that signed the brokers' certificates.",
            )
        case "expired":
            return SetupError(
                f"Kafka at {where}: the broker's TLS certificate has expired",
                "The broker needs a new certificate; also check this machine's clock (`date`).",
            )
        case "not-yet-valid":
            return SetupError(
                f"Kafka at {where}: the broker's TLS certificate is not valid yet ({detail})",
                "Check this machine's clock (`date`), or wait until the certificate's start date.",
            )
        case "wrong-host":
            return SetupError(
                f"Kafka at {where}: the broker's TLS certificate is not for {host} ({detail})",
                "Use in kafka.bootstrap_servers a host name the certificate names, or give the broker a "
                "certificate for this name; kafka.ssl_check_hostname: false turns the check off (tests only: "
                "it lets anyone with a certificate from the same CA pose as the broker).",
            )
        case "no-client-cert":
            return SetupError(
                f"Kafka at {where} requires a client certificate (mutual TLS) and kafka.ssl_certfile is not set: "
                f"the broker answered {detail}",
                "Set kafka.ssl_certfile and kafka.ssl_keyfile (and kafka.ssl_password for an encrypted key).",
            )
        case "client-cert-refused":
            return SetupError(
                f"Kafka at {where} refused the client certificate in kafka.ssl_certfile ({config.ssl_certfile}): "
                f"the broker answered {detail}",
                "The broker must trust the CA that signed the client certificate (its ssl.truststore), and the "
                "certificate must be valid for client authentication.",
            )
        case "not-tls":
            return SetupError(
                f"Kafka at {where} does not answer TLS (kafka.security_protocol is {config.security_protocol}): "
                f"{detail}",
                "Check that kafka.security_protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) matches the listener "
                "at kafka.bootstrap_servers.",
            )
    return SetupError(
        f"Kafka at {where}: the TLS handshake failed: {detail}",
        "Check kafka.ssl_cafile and, for mutual TLS, kafka.ssl_certfile and kafka.ssl_keyfile; --verbose shows "
        "the client's log.",
    )


def _common_name(name: Any) -> str:
    """The commonName of a getpeercert() subject or issuer: a tuple of RDNs, each a tuple of (key, value)."""
    for rdn in name or ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


def describe(config: KafkaConfig, timeout: float = 5.0) -> str:
    """For `kingest check`: what the first answering broker's TLS connection is (version, certificate names,
    issuer, expiry), once it answered ApiVersions over it. Raises the SetupError naming the cause when kingest
    finds one (tls_problem)."""
    ctx = context(config)
    for server in servers(config):
        host, port = server
        try:
            with (
                socket.create_connection(server, timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=host) as conn,
            ):
                version = conn.version()
                cert = conn.getpeercert() or {}
                if not _answers_api_versions(conn):
                    continue
        except (OSError, struct.error):
            found = diagnose(config, server, timeout)
            if found is not None:
                raise _finding_error(config, server, found) from None
            continue
        subject, issuer = _common_name(cert.get("subject")), _common_name(cert.get("issuer"))
        names = ", ".join(str(entry[1]) for entry in cert.get("subjectAltName", ()) if len(entry) == 2) or subject
        hostname = "checked" if config.ssl_check_hostname else "NOT checked (kafka.ssl_check_hostname: false)"
        client = "a client certificate sent" if config.ssl_certfile else "no client certificate"
        return (
            f"{version} to {_display(server)}: certificate for {names}, issued by {issuer}, valid until "
            f"{cert.get('notAfter', '?')}; host name {hostname}; {client}"
        )
    return "not checked: no broker answered over TLS"
