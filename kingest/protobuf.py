"""Protobuf values as Arrow columns (``records.format: protobuf``).

A registry holds a Protobuf schema as ``.proto`` text (what Confluent's serializers register) or as a base64
``FileDescriptorProto`` (what some tools register, and what Confluent answers to ``?format=serialized``, which
Apicurio 3.0.9 ignores). Text is compiled with the protoc that grpcio-tools bundles (Google's well-known types
included); a schema's references (imports registered as other subjects) are fetched and compiled with it.

The wire format after the schema id: the message indexes (a zig-zag varint count, then that many zig-zag varints:
the path to the message type among the file's nested declarations; a single 0 byte stands for ``[0]``, the first
message), then the serialized message.

Types: int32, sint32, sfixed32 int32; uint32, fixed32 uint32; int64, sint64, sfixed64 int64; uint64, fixed64
uint64; float float32; double float64; bool; string; bytes binary; an enum the name of its value (string); a
message a struct (null when unset); repeated a list; a map a map; google.protobuf.Timestamp a timestamp[us, UTC];
the wrappers (google.protobuf.Int64Value...) a nullable value. A proto3 scalar without presence reads as its
default (0, "") when unset, as every Protobuf reader gives it; an ``optional`` one, or one in a ``oneof``, as null.
Decoding is record by record (protobuf's C parser, then one Python pass per field).
"""

from __future__ import annotations

import base64
import datetime
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from .coerce import no_columns, table_of_rows
from .errors import SetupError

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


class ProtobufSchemaError(ValueError):
    """A schema that cannot be compiled, or cannot become Arrow columns (a recursive message)."""


def require() -> None:
    try:
        import google.protobuf  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as exc:
        raise SetupError(
            f"records.format: protobuf needs {exc.name}, which is not installed",
            "Install kingest with its protobuf extra: pip install 'kingest[protobuf]'.",
        ) from None


class ProtobufSchema:
    """One registered schema (a file and its imports), and the message types of the indexes records name."""

    def __init__(self, files: Sequence[tuple[str, str]], name: str) -> None:
        """``files``: (file name, schema text) pairs; the last is the schema itself, the others its references."""
        from google.protobuf import descriptor_pb2, descriptor_pool

        self.name = name
        fds = _compile(files, name)
        self.pool = descriptor_pool.DescriptorPool()
        try:
            for proto in _with_well_known(list(fds.file)):
                self.pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise ProtobufSchemaError(f"{name} cannot be loaded: {exc}") from None
        main = fds.file[-1] if fds.file else descriptor_pb2.FileDescriptorProto()
        self.file = self.pool.FindFileByName(main.name)
        self._types: dict[tuple[int, ...], _MessageType | str] = {}

    def message(self, indexes: tuple[int, ...]) -> _MessageType | str:
        """The message type at ``indexes`` (or why there is none)."""
        if indexes not in self._types:
            self._types[indexes] = self._find(indexes)
        return self._types[indexes]

    def _find(self, indexes: tuple[int, ...]) -> _MessageType | str:
        from google.protobuf import message_factory

        messages = list(self.file.message_types_by_name.values())
        descriptor = None
        for i in indexes:
            if i >= len(messages):
                return f"message index {list(indexes)} is not in {self.name}"
            descriptor = messages[i]
            messages = list(descriptor.nested_types)
        if descriptor is None:
            return f"{self.name} declares no message"
        try:
            t = _arrow_type(descriptor, ())
        except ProtobufSchemaError as exc:
            return str(exc)
        return _MessageType(
            descriptor.full_name, message_factory.GetMessageClass(descriptor), t, _converter(descriptor)
        )


class _MessageType:
    def __init__(self, name: str, cls: Any, t: pa.StructType, convert: Callable[[Any], Any]) -> None:
        self.name = name
        self.cls = cls
        self.schema = pa.schema(list(t))
        self.convert = convert

    def decode(self, payloads: Sequence[bytes]) -> tuple[pa.Table, dict[int, str]]:
        from google.protobuf.message import DecodeError

        rows: list[dict[str, Any]] = []
        bad: dict[int, str] = {}
        for i, payload in enumerate(payloads):
            try:
                rows.append(self.convert(self.cls.FromString(payload)))
            except (DecodeError, ValueError, TypeError, OverflowError) as exc:
                bad[i] = f"not a valid {self.name} message: {exc or type(exc).__name__}"
        positions = [i for i in range(len(payloads)) if i not in bad]
        return table_of_rows(rows, positions, self._columns, self.name, bad), bad

    def _columns(self, rows: list[dict[str, Any]]) -> pa.Table:
        if not len(self.schema):  # a message with no fields: rows without columns
            return no_columns(len(rows))
        columns = [pa.array([r[f.name] for r in rows], f.type) for f in self.schema]
        return pa.Table.from_arrays(columns, schema=self.schema)


def split_indexes(payload: bytes) -> tuple[tuple[int, ...], int] | None:
    """The message indexes at the start of ``payload`` (after the schema id) and where the message starts; None
    when they do not parse."""
    values: list[int] = []
    pos = 0
    count: int | None = None
    while count is None or len(values) < count:
        shift = 0
        raw = 0
        while True:
            if pos >= len(payload) or shift > 63:
                return None
            byte = payload[pos]
            pos += 1
            raw |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        value = (raw >> 1) ^ -(raw & 1)
        if count is None:
            if value < 0 or value > 32:
                return None
            count = value
            if count == 0:
                return (0,), pos
        else:
            if value < 0:
                return None
            values.append(value)
    return tuple(values), pos


# -------------------------------------------------------------------------------------------- compiling


def _compile(files: Sequence[tuple[str, str]], name: str) -> Any:
    """A FileDescriptorSet of ``files`` (and the well-known types they import)."""
    from google.protobuf import descriptor_pb2

    out = descriptor_pb2.FileDescriptorSet()
    texts: list[tuple[str, str]] = []
    for file_name, text in files:
        proto = _descriptor(text)
        if proto is not None:
            if not proto.name:
                proto.name = file_name
            out.file.append(proto)
        else:
            texts.append((file_name, text))
    if not texts:
        return out
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="kingest-proto-") as tmp:
        root = pathlib.Path(tmp)
        for file_name, text in texts:
            target = _inside(root, file_name, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        descriptor_set = root / "kingest-out.pb"
        # protoc in a process of its own: its errors come back on a pipe (in this process it would write them
        # to file descriptor 2, shared by every thread)
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--descriptor_set_out={descriptor_set}",
            "--include_imports",
            texts[-1][0],
        ]
        try:
            done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProtobufSchemaError(f"{name} could not be compiled: {exc}") from None
        if done.returncode != 0 or not descriptor_set.exists():
            problem = (done.stderr or done.stdout).strip().replace(str(root) + "/", "")
            raise ProtobufSchemaError(f"{name} does not compile: {problem or f'protoc exit code {done.returncode}'}")
        compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    have = {f.name for f in out.file}
    out.file.extend(f for f in compiled.file if f.name not in have)
    return out


def _inside(root: pathlib.Path, file_name: str, name: str) -> pathlib.Path:
    """Where a schema file named by the registry (a reference's name, as imported) is written: under ``root``,
    never elsewhere (whoever registers a schema chooses the names of its references)."""
    relative = pathlib.PurePosixPath(file_name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts or "\\" in file_name:
        raise ProtobufSchemaError(f"{name} references a file named {file_name!r}: not a relative import path")
    return root.joinpath(*relative.parts)


def _with_well_known(files: list[Any]) -> list[Any]:
    """``files``, after the Google well-known types they import and do not include (a descriptor registered
    without its imports)."""
    from google.protobuf import (  # noqa: F401 - imported for their descriptors
        any_pb2,
        descriptor_pb2,
        descriptor_pool,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )

    have = {f.name for f in files}
    extra = []
    for name in sorted({d for f in files for d in f.dependency} - have):
        if name.startswith("google/protobuf/"):
            try:
                found = descriptor_pool.Default().FindFileByName(name)
            except KeyError:
                continue
            proto = descriptor_pb2.FileDescriptorProto()
            found.CopyToProto(proto)
            extra.append(proto)
    return extra + files


def _descriptor(text: str) -> Any:
    """``text`` as a base64 FileDescriptorProto, or None when it is .proto text."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    if re.search(r"\b(syntax|message|package|edition)\b", text):
        return None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    except (ValueError, DecodeError):
        return None
    return proto if proto.message_type else None


# ------------------------------------------------------------------------------------- Protobuf to Arrow


def _arrow_type(descriptor: Any, path: tuple[str, ...]) -> pa.StructType:
    if descriptor.full_name in path:
        raise ProtobufSchemaError(
            f"message {descriptor.full_name} contains itself (a recursive type cannot become Parquet columns)"
        )
    inner = (*path, descriptor.full_name)
    return pa.struct([pa.field(f.name, _field_type(f, inner)) for f in descriptor.fields])


def _field_type(field: Any, path: tuple[str, ...]) -> pa.DataType:
    if _is_map(field):
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return pa.map_(_value_type(key, path), _value_type(value, path))
    t = _value_type(field, path)
    return pa.list_(t) if _repeated(field) else t


def _value_type(field: Any, path: tuple[str, ...]) -> pa.DataType:
    from google.protobuf.descriptor import FieldDescriptor as F

    if field.type == F.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return pa.timestamp("us", tz="UTC")
        if name in _WRAPPERS:
            return _value_type(field.message_type.fields_by_name["value"], path)
        return _arrow_type(field.message_type, path)
    return {
        F.TYPE_INT32: pa.int32(),
        F.TYPE_SINT32: pa.int32(),
        F.TYPE_SFIXED32: pa.int32(),
        F.TYPE_UINT32: pa.uint32(),
        F.TYPE_FIXED32: pa.uint32(),
        F.TYPE_INT64: pa.int64(),
        F.TYPE_SINT64: pa.int64(),
        F.TYPE_SFIXED64: pa.int64(),
        F.TYPE_UINT64: pa.uint64(),
        F.TYPE_FIXED64: pa.uint64(),
        F.TYPE_FLOAT: pa.float32(),
        F.TYPE_DOUBLE: pa.float64(),
        F.TYPE_BOOL: pa.bool_(),
        F.TYPE_STRING: pa.string(),
        F.TYPE_BYTES: pa.binary(),
        F.TYPE_ENUM: pa.string(),
    }[field.type]


def _repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf 6+; `label` is gone in 7
    return bool(repeated) if repeated is not None else bool(field.label == field.LABEL_REPEATED)


def _is_map(field: Any) -> bool:
    return bool(_repeated(field) and field.message_type is not None and field.message_type.GetOptions().map_entry)


def _converter(descriptor: Any) -> Callable[[Any], dict[str, Any]]:
    fields = [(f.name, _field_converter(f), f.has_presence and not _repeated(f)) for f in descriptor.fields]

    def convert(message: Any) -> dict[str, Any]:
        return {
            name: (None if presence and not message.HasField(name) else read(getattr(message, name)))
            for name, read, presence in fields
        }

    return convert


def _field_converter(field: Any) -> Callable[[Any], Any]:
    if _is_map(field):
        key = _value_converter(field.message_type.fields_by_name["key"])
        value = _value_converter(field.message_type.fields_by_name["value"])
        if field.message_type.fields_by_name["value"].message_type is not None:
            return lambda m: [(key(k), value(m[k])) for k in m]
        return lambda m: [(key(k), value(v)) for k, v in m.items()]
    read = _value_converter(field)
    if _repeated(field):
        return lambda values: [read(v) for v in values]
    return read


def _value_converter(field: Any) -> Callable[[Any], Any]:
    from google.protobuf.descriptor import FieldDescriptor as F

    if field.type == F.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda v: names.get(v, str(v))
    if field.type == F.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return lambda m: _EPOCH + datetime.timedelta(seconds=m.seconds, microseconds=m.nanos // 1000)
        if name in _WRAPPERS:
            return lambda m: m.value
        return _converter(field.message_type)
    return lambda v: v
