"""Where files live in the lake, and what their names say: the one place that builds and parses them.

Data files, in Hive-style folders (pyarrow datasets, DuckDB and Spark read the folder names as columns)::

    topic=<t>/partition=<p>/<name>                      lake.partition_by: [] (the default)
    topic=<t>/date=<YYYY-MM-DD>/<name>                  lake.partition_by: [date]
    topic=<t>/date=<YYYY-MM-DD>/hour=<HH>/<name>        lake.partition_by: [date, hour]

Dead letters (``records.on_error: dead-letter``), hidden from dataset readers by the leading underscore::

    _dead_letters/topic=<t>/partition=<p>/<name>

A file's name carries its topic-partition and offsets, zero-padded so that names sort in offset order::

    <t>-<p>-<first offset:020d>-<last offset:020d>[-<tag>].parquet

``tag`` (exactly-once only) is the writer's id and a serial of that writer (``<writer>-<n>``): a name is never
used twice (recovery relies on it: see ``ManifestStore.recover``). The offsets manifest keeps its own files
under ``_kingest/<pipeline>/<kind>/topic=<t>/partition=<p>/``, with the same partition folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .types import TopicPartition

DEAD_LETTER_FOLDER = "_dead_letters"
SUFFIX = ".parquet"
_OFFSET_DIGITS = 20
_NAME_TAIL = r"(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})(?:-(?P<tag>[^./]+))?\.parquet$"
_NAME_AFTER_TOPIC = re.compile("^" + _NAME_TAIL)  # the topic is known (from the folder) and matched apart
_NAME = re.compile(r"^(?P<topic>.+?)-" + _NAME_TAIL)


@dataclass(frozen=True)
class FileName:
    """What a kingest file name says."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    tag: str | None = None

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)

    def __str__(self) -> str:
        return file_name(self.topic, self.partition, self.first_offset, self.last_offset, self.tag)


# ---------------------------------------------------------------------------------------------- names


def file_name(topic: str, partition: int, first_offset: int, last_offset: int, tag: str | None = None) -> str:
    """The name of a data or dead-letter file. ``tag`` (exactly-once: the writer's id and serial) keeps two
    writers that cut the same batch, or one writer that cuts it twice, from ever writing the same name."""
    suffix = f"-{tag}" if tag else ""
    return f"{topic}-{partition}-{first_offset:0{_OFFSET_DIGITS}d}-{last_offset:0{_OFFSET_DIGITS}d}{suffix}{SUFFIX}"


def parse_file_name(name: str, topic: str | None = None) -> FileName | None:
    """What a file name says, or None when it is not a kingest name. ``topic``: the topic the name must start
    with (known from the folder), which settles a topic holding ``-<digits>`` parts; without it, the shortest
    topic that makes a valid name."""
    if topic is None:
        match = _NAME.match(name)
        if match is None:
            return None
        topic = match["topic"]
    else:
        if not name.startswith(f"{topic}-"):
            return None
        match = _NAME_AFTER_TOPIC.match(name[len(topic) + 1 :])
        if match is None:
            return None
    return FileName(topic, int(match["partition"]), int(match["first"]), int(match["last"]), match["tag"])


# ---------------------------------------------------------------------------------------------- folders


def topic_folder(topic: str) -> str:
    return f"topic={topic}"


def partition_folder(topic: str, partition: int) -> str:
    """``topic=<t>/partition=<p>``: the data folder of the default layout, and the tail of the dead-letter and
    manifest folders."""
    return f"{topic_folder(topic)}/partition={partition}"


def time_folder(topic: str, date: str, hour: str | None = None) -> str:
    """``topic=<t>/date=<YYYY-MM-DD>[/hour=<HH>]``: the data folder under ``lake.partition_by``."""
    folder = f"{topic_folder(topic)}/date={date}"
    return folder if hour is None else f"{folder}/hour={hour}"


def dead_letter_folder(topic: str, partition: int) -> str:
    return f"{DEAD_LETTER_FOLDER}/{partition_folder(topic, partition)}"


def topic_partition_of(path: str) -> TopicPartition | None:
    """The topic-partition named by a path's ``topic=<t>`` and ``partition=<p>`` folders (wherever they are in
    it), or None when it has not both."""
    topic: str | None = None
    partition: int | None = None
    for part in path.split("/"):
        if topic is None and part.startswith("topic="):
            topic = part[len("topic=") :]
        elif partition is None and part.startswith("partition=") and part[len("partition=") :].isdigit():
            partition = int(part[len("partition=") :])
    return None if topic is None or partition is None else (topic, partition)


# ---------------------------------------------------------------------------------------------- paths


def data_file(path: str) -> FileName | None:
    """A data file's path (relative to the lake root) as its name says it, or None when it is not one: the
    first folder is ``topic=<t>`` and the name is a kingest name of that topic, whatever the folders between
    (any ``lake.partition_by``)."""
    parts = path.split("/")
    if len(parts) < 2 or not parts[0].startswith("topic="):
        return None
    return parse_file_name(parts[-1], parts[0][len("topic=") :])


def dead_letter_file(path: str) -> TopicPartition | None:
    """The topic-partition of a dead-letter file's path (``_dead_letters/topic=<t>/partition=<p>/<file>.parquet``,
    any visible Parquet file name), or None when the path is not one."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != DEAD_LETTER_FOLDER:
        return None
    if not parts[-1].endswith(SUFFIX) or parts[-1].startswith((".", "_")):
        return None
    if not parts[1].startswith("topic=") or not parts[2].startswith("partition="):
        return None
    return topic_partition_of("/".join(parts[1:3]))
