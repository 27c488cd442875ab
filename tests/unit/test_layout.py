"""Lake paths are built and parsed in one module (kingest/layout.py): every name it builds parses back to what
built it, in every layout, with and without a writer tag."""

from __future__ import annotations

import pytest

from kingest import layout
from kingest.layout import FileName

NAMES = [
    FileName("orders", 3, 40, 42),
    FileName("orders", 3, 40, 42, "abc123-0"),  # exactly-once: the writer's id and its serial
    FileName("orders", 0, 0, 10**19, "abc123-17"),
    FileName("my-topic-2", 12, 5, 9),  # a topic holding dashes and digits
    FileName("my-topic-2", 12, 5, 9, "w1-3"),
    FileName("a.b_c", 1, 7, 7),
]


@pytest.mark.parametrize("name", NAMES, ids=str)
def test_file_names_round_trip(name: FileName):
    text = layout.file_name(name.topic, name.partition, name.first_offset, name.last_offset, name.tag)
    assert str(name) == text
    assert layout.parse_file_name(text, name.topic) == name
    assert layout.parse_file_name(text) == name


def test_file_names_sort_in_offset_order_and_carry_the_tag_last():
    assert layout.file_name("t", 2, 9, 10) == "t-2-00000000000000000009-00000000000000000010.parquet"
    assert layout.file_name("t", 2, 9, 10, "w-0") == "t-2-00000000000000000009-00000000000000000010-w-0.parquet"
    names = [layout.file_name("t", 0, first, first + 1) for first in (100, 9, 10)]
    assert sorted(names) == [layout.file_name("t", 0, first, first + 1) for first in (9, 10, 100)]


@pytest.mark.parametrize(
    "text",
    [
        "orders-3-40-42.parquet",  # offsets not zero-padded
        "orders-3-00000000000000000040-00000000000000000042.json",
        "orders-x-00000000000000000040-00000000000000000042.parquet",
        "part-0001.parquet",  # someone else's file
        ".orders-3-00000000000000000040-00000000000000000042.parquet.tmp",
    ],
)
def test_names_that_are_not_kingest_names_parse_to_none(text: str):
    assert layout.parse_file_name(text) is None
    assert layout.parse_file_name(text, "orders") is None


def test_a_name_of_another_topic_is_not_one_of_this_topic():
    text = layout.file_name("orders", 1, 0, 1)
    assert layout.parse_file_name(text, "order") is None
    assert layout.parse_file_name(text, "orders-1") is None


@pytest.mark.parametrize("name", NAMES, ids=str)
def test_data_file_paths_round_trip_in_every_layout(name: FileName):
    folders = [
        layout.partition_folder(name.topic, name.partition),
        layout.time_folder(name.topic, "2024-02-29"),
        layout.time_folder(name.topic, "2024-02-29", "07"),
    ]
    assert folders[1:] == [f"topic={name.topic}/date=2024-02-29", f"topic={name.topic}/date=2024-02-29/hour=07"]
    for folder in folders:
        assert layout.data_file(f"{folder}/{name}") == name
    assert layout.topic_partition_of(f"{folders[0]}/{name}") == name.tp
    assert layout.topic_partition_of(f"{folders[1]}/{name}") is None  # the partition is in the name only


def test_dead_letter_paths_round_trip():
    name = FileName("orders", 2, 102, 106, "w1-1")
    path = f"{layout.dead_letter_folder('orders', 2)}/{name}"
    assert (
        path == "_dead_letters/topic=orders/partition=2/orders-2-00000000000000000102-00000000000000000106-w1-1.parquet"
    )
    assert layout.dead_letter_file(path) == ("orders", 2)
    assert layout.data_file(path) is None  # not a data file: hidden from dataset readers
    for other in [
        "_dead_letters/topic=orders/partition=x/f.parquet",
        "_dead_letters/topic=orders/partition=2/.f.parquet",
        "_dead_letters/topic=orders/partition=2/f.json",
        "_dead_letters/topic=orders/f.parquet",
        f"{layout.partition_folder('orders', 2)}/{name}",
    ]:
        assert layout.dead_letter_file(other) is None


def test_manifest_folders_name_their_topic_partition():
    assert layout.topic_partition_of("_kingest/p/manifest/topic=a-b/partition=7/00000000000000000001.json") == (
        "a-b",
        7,
    )
    assert layout.topic_partition_of("_kingest/p/manifest/topic=a/00000000000000000001.json") is None
