"""memory_store.group_commit: writes that arrive while one of their key commits are committed together next;
a group that fails is retried write by write on the callers' own threads. Real threads, a recording commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence

import pytest

from memory_store.group_commit import GroupCommit


class Recorder:
    """A commit function that records each transaction (key, parts, thread) and can be held open."""

    def __init__(self, fails: Callable[[Sequence[str]], bool] = lambda parts: False) -> None:
        self.transactions: list[tuple[Hashable, list[str], int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fails = fails
        self._lock = threading.Lock()

    def __call__(self, key: Hashable, parts: Sequence[str]) -> list[str]:
        with self._lock:
            self.transactions.append((key, list(parts), threading.get_ident()))
        self.entered.set()
        assert self.hold.wait(30)
        if self.fails(parts):
            raise ValueError(f"refused {sorted(p for p in parts if p.startswith('bad'))}")
        return [f"{key}:{part}" for part in parts]


def _start(group: GroupCommit[str, str], key: Hashable, parts: Sequence[str]) -> tuple[list[threading.Thread], dict]:
    outcome: dict[str, object] = {}

    def write(part: str) -> None:
        outcome[f"{part}-thread"] = threading.get_ident()
        try:
            outcome[part] = group.run(key, part)
        except ValueError as exc:
            outcome[part] = exc

    threads = [threading.Thread(target=write, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    return threads, outcome


def _wait_queued(group: GroupCommit[str, str], key: Hashable, count: int) -> None:
    deadline = time.monotonic() + 30
    while group.queued(key) < count:
        assert time.monotonic() < deadline, f"{group.queued(key)} of {count} writes queued"
        time.sleep(0.002)


def test_a_write_with_nothing_committing_commits_at_once_alone() -> None:
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(recorder)
    assert group.run("t", "a") == "t:a"
    assert group.run("t", "b") == "t:b"
    assert [parts for _, parts, _ in recorder.transactions] == [["a"], ["b"]]
    assert (group.transactions, group.writes, group.queued("t")) == (2, 2, 0)


def test_writes_arriving_while_one_commits_are_committed_together_next_by_the_first_of_them() -> None:
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(recorder)
    recorder.hold.clear()
    first, outcome = _start(group, "t", ["a"])
    assert recorder.entered.wait(30)
    rest, later = _start(group, "t", [f"w{n}" for n in range(6)])
    _wait_queued(group, "t", 6)
    recorder.hold.set()
    for thread in first + rest:
        thread.join(30)
    assert outcome["a"] == "t:a" and all(later[f"w{n}"] == f"t:w{n}" for n in range(6))
    assert [sorted(parts) for _, parts, _ in recorder.transactions] == [["a"], [f"w{n}" for n in range(6)]]
    # The second transaction ran on the thread of one of the writes it committed, not on the first's.
    second_thread = recorder.transactions[1][2]
    assert second_thread != outcome["a-thread"]
    assert second_thread in {later[f"w{n}-thread"] for n in range(6)}
    assert (group.transactions, group.writes, group.queued("t")) == (2, 7, 0)


def test_keys_are_never_grouped_together() -> None:
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(recorder)
    recorder.hold.clear()
    first, _ = _start(group, "t1", ["a"])
    assert recorder.entered.wait(30)
    other, outcome = _start(group, "t2", ["b"])
    deadline = time.monotonic() + 30
    while len(recorder.transactions) < 2:  # t2's write is not held behind t1's commit
        assert time.monotonic() < deadline
        time.sleep(0.002)
    recorder.hold.set()
    for thread in first + other:
        thread.join(30)
    assert outcome["b"] == "t2:b"
    assert sorted((key, parts) for key, parts, _ in recorder.transactions) == [("t1", ["a"]), ("t2", ["b"])]


def test_a_group_is_cut_at_max_size() -> None:
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(recorder, size=lambda part: int(part.split("x")[1]), max_size=5)
    recorder.hold.clear()
    first, _ = _start(group, "t", ["ax1"])
    assert recorder.entered.wait(30)
    queued: list[threading.Thread] = []
    for n, part in enumerate(["bx2", "cx2", "dx2", "ex9"]):  # in this order: each queued before the next starts
        threads, _ = _start(group, "t", [part])
        queued += threads
        _wait_queued(group, "t", n + 1)
    recorder.hold.set()
    for thread in first + queued:
        thread.join(30)
    # Up to 5 in all: b and c (4), then d alone (d + e is 11), then e alone (larger than the limit by itself).
    assert [parts for _, parts, _ in recorder.transactions] == [["ax1"], ["bx2", "cx2"], ["dx2"], ["ex9"]]


@pytest.mark.parametrize("rounds", range(3))
def test_a_failed_group_is_retried_write_by_write_each_on_its_own_thread(rounds: int) -> None:
    recorder = Recorder(fails=lambda parts: any(part.startswith("bad") for part in parts))
    group: GroupCommit[str, str] = GroupCommit(recorder)
    recorder.hold.clear()
    first, outcome = _start(group, "t", ["a"])
    assert recorder.entered.wait(30)
    names = ["w0", "bad1", "w2", "w3"]
    rest, later = _start(group, "t", names)
    _wait_queued(group, "t", 4)
    recorder.hold.set()
    for thread in first + rest:
        thread.join(30)
    assert outcome["a"] == "t:a"
    assert [later[name] for name in ("w0", "w2", "w3")] == ["t:w0", "t:w2", "t:w3"]
    assert isinstance(later["bad1"], ValueError) and str(later["bad1"]) == "refused ['bad1']"
    grouped, *alone = recorder.transactions[1:]
    assert sorted(grouped[1]) == sorted(names)
    # Each write of the failed group committed again alone, on its caller's own thread.
    assert sorted((parts[0], thread) for _, parts, thread in alone) == sorted(
        (name, later[f"{name}-thread"]) for name in names
    )
    assert (group.transactions, group.writes) == (6, 9)


def test_a_lone_write_that_fails_raises_its_error_and_is_not_run_again() -> None:
    recorder = Recorder(fails=lambda parts: True)
    group: GroupCommit[str, str] = GroupCommit(recorder)
    with pytest.raises(ValueError, match="refused"):
        group.run("t", "bad")
    assert len(recorder.transactions) == 1 and group.queued("t") == 0
    recorder.fails = lambda parts: False
    assert group.run("t", "next") == "t:next"  # the key was released


@pytest.mark.parametrize("seed", range(3))
def test_a_storm_of_writes_each_committed_exactly_once(seed: int) -> None:
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(recorder, max_size=8)
    parts = [f"{key}-{n}" for key in ("t1", "t2") for n in range(150)]
    results: dict[str, str] = {}
    lock = threading.Lock()

    def writer(mine: list[str]) -> None:
        for part in mine:
            result = group.run(part.split("-")[0], part)
            with lock:
                results[part] = result

    threads = [threading.Thread(target=writer, args=(parts[n::12],)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {part: f"{part.split('-')[0]}:{part}" for part in parts}
    committed = [part for _, batch, _ in recorder.transactions for part in batch]
    assert sorted(committed) == sorted(parts)
    assert all(len(batch) <= 8 and {p.split("-")[0] for p in batch} == {key} for key, batch, _ in recorder.transactions)
