"""The shared-item table: identical inputs of jobs in flight share one item, never one already started."""

import threading

from tasks.coalescing import SharedItems
from tasks.planning import Item, jobs_of


class FakeJob:
    """A job as the table sees it: done or not."""

    def __init__(self, name: str, done: bool = False):
        self.id = name
        self.done = done


def item(job, key="k", index=0, seq=0):
    return Item(job, index, encoding=None, length=8, params_key="p", seq=seq, key=key)


def test_an_input_joins_the_waiting_item_with_its_key():
    table, first, second = SharedItems(), FakeJob("a"), FakeJob("b")
    leader = item(first)
    table.lead(leader)
    assert table.join("k", second, 3)
    assert leader.targets == [(first, 0), (second, 3)]


def test_no_sharing_without_a_key_or_a_leader():
    table = SharedItems()
    table.lead(item(FakeJob("a"), key=None))
    assert len(table) == 0
    assert not table.join(None, FakeJob("b"), 0)
    assert not table.join("other", FakeJob("b"), 0)


def test_no_job_joins_an_item_once_it_is_in_a_batch():
    table, leader = SharedItems(), item(FakeJob("a"))
    table.lead(leader)
    table.start([leader])
    assert not table.join("k", FakeJob("b"), 0)
    assert leader.targets == [(leader.job, 0)]


def test_no_job_joins_an_item_no_job_wants():
    table, leader = SharedItems(), item(FakeJob("a", done=True))
    table.lead(leader)
    assert not table.join("k", FakeJob("b"), 0)


def test_handing_out_removes_the_item_so_the_next_input_leads_again():
    table, first, second = SharedItems(), FakeJob("a"), FakeJob("b")
    leader = item(first)
    table.lead(leader)
    table.join("k", second, 1)
    assert table.hand_out(leader) == [(first, 0), (second, 1)]
    assert len(table) == 0
    assert not table.join("k", FakeJob("c"), 0)


def test_forget_removes_only_the_current_leader_of_a_key():
    table = SharedItems()
    old, new = item(FakeJob("a"), seq=1), item(FakeJob("b"), seq=2)
    table.lead(old)
    table.lead(new)  # the same key led again (the old item had started)
    table.forget([old])
    assert len(table) == 1
    assert table.join("k", FakeJob("c"), 0) and len(new.targets) == 2
    table.clear()
    assert len(table) == 0


def test_an_input_either_joins_before_the_start_or_not_at_all():
    """Joins racing a batch's start: every input that joined is among the targets handed out."""
    for _ in range(200):
        table, leader = SharedItems(), item(FakeJob("a"))
        table.lead(leader)
        joined = []

        def join(n, table=table, joined=joined):
            if table.join("k", FakeJob(str(n)), 0):
                joined.append(n)

        threads = [threading.Thread(target=join, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        table.start([leader])
        handed = table.hand_out(leader)
        for t in threads:
            t.join()
        assert len(handed) == 1 + len(joined)


def test_jobs_of_lists_each_job_once_in_order():
    a, b, c = FakeJob("a"), FakeJob("b"), FakeJob("c")
    first, second = item(a), item(b, seq=1)
    first.targets.append((c, 0))
    second.targets.append((a, 1))
    assert jobs_of([first, second]) == [a, c, b]
