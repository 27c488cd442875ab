"""GroupWatch: a consumer that has owned no partition for long and that its group does not list ends the run
with OutOfGroup; one that waits for good reasons (listed by the group) or whose group cannot be asked goes on.
A fake clock and a fake DescribeGroups answer: no broker needed."""

from __future__ import annotations

import pytest

from kingest.errors import OutOfGroup
from kingest.sources.kafka_python import GroupWatch

SESSION = 10.0


class Group:
    """The answers the watch gets, and how often it asks."""

    def __init__(self, answer: tuple[str, set[str]] | None) -> None:
        self.answer = answer
        self.asked = 0

    def describe(self) -> tuple[str, set[str]] | None:
        self.asked += 1
        return self.answer


def make(group: Group, now: list[float]) -> GroupWatch:
    return GroupWatch("g", SESSION, group.describe, lambda: "me", clock=lambda: now[0])


def test_a_member_dropped_from_its_group_fails_loudly_after_two_answers_without_it() -> None:
    now = [0.0]
    group = Group(("Empty", set()))
    watch = make(group, now)
    watch.owns(True)
    now[0] = 5.0
    watch.owns(False)  # a revocation, and no assignment after it
    for t in (6.0, 20.0, 24.9):  # under two session timeouts: nothing is asked
        now[0] = t
        watch.check()
    assert group.asked == 0
    now[0] = 25.0
    watch.check()  # first answer without this member
    assert group.asked == 1
    now[0] = 30.0
    watch.check()  # at most one question a session timeout
    assert group.asked == 1
    now[0] = 35.0
    with pytest.raises(OutOfGroup) as info:
        watch.check()
    assert "owned no partition for 30s" in str(info.value)
    assert "group g does not count it as a member (group empty, 0 member(s))" in str(info.value)
    assert info.value.hint and "Restart the run" in info.value.hint


def test_a_member_listed_by_its_group_goes_on_waiting() -> None:
    # An idle member (more members than partitions) or one held in a long rebalance.
    now = [0.0]
    group = Group(("Stable", {"me", "other"}))
    watch = make(group, now)
    watch.owns(False)
    for step in range(1, 40):
        now[0] = step * SESSION
        watch.check()
    assert group.asked > 30


def test_an_unknown_answer_is_not_an_absence() -> None:
    now = [0.0]
    group = Group(None)  # broker unreachable, not authorized
    watch = make(group, now)
    for step in range(1, 10):
        now[0] = step * SESSION
        watch.check()
    assert group.asked > 5


def test_an_assignment_in_between_starts_the_count_again() -> None:
    now = [0.0]
    group = Group(("Empty", set()))
    watch = make(group, now)
    now[0] = 25.0
    watch.check()  # one answer without this member
    watch.owns(True)
    now[0] = 26.0
    watch.owns(False)
    now[0] = 40.0
    watch.check()  # under two session timeouts since the new revocation
    assert group.asked == 1
    now[0] = 46.0
    watch.check()  # the first answer of the new count
    now[0] = 56.0
    with pytest.raises(OutOfGroup):
        watch.check()


def test_a_consumer_that_owns_partitions_never_asks() -> None:
    now = [0.0]
    group = Group(("Empty", set()))
    watch = make(group, now)
    watch.owns(True)
    for step in range(1, 20):
        now[0] = step * SESSION
        watch.check()
    assert group.asked == 0
