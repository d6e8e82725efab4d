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
    assert not table.join_or_lead(leader)  # the first with its key leads
    assert table.join_or_lead(item(second, index=3))
    assert leader.targets == [(first, 0), (second, 3)]
    assert len(table) == 1


def test_an_item_without_a_key_is_never_shared():
    table = SharedItems()
    assert not table.join_or_lead(item(FakeJob("a"), key=None))
    assert not table.join_or_lead(item(FakeJob("b"), key=None))
    assert len(table) == 0


def test_no_job_joins_an_item_once_it_is_in_a_batch():
    table, leader = SharedItems(), item(FakeJob("a"))
    table.join_or_lead(leader)
    table.start([leader])
    late = item(FakeJob("b"), seq=1)
    assert not table.join_or_lead(late)  # it gets an item of its own, and leads from now on
    assert leader.targets == [(leader.job, 0)]
    assert table.join_or_lead(item(FakeJob("c"), seq=2)) and len(late.targets) == 2


def test_no_job_joins_an_item_no_job_wants():
    table, leader = SharedItems(), item(FakeJob("a", done=True))
    table.join_or_lead(leader)
    assert not table.join_or_lead(item(FakeJob("b"), seq=1))
    assert leader.targets == [(leader.job, 0)]


def test_handing_out_removes_the_item_so_the_next_input_leads_again():
    table, first, second = SharedItems(), FakeJob("a"), FakeJob("b")
    leader = item(first)
    table.join_or_lead(leader)
    table.join_or_lead(item(second, index=1))
    assert table.hand_out(leader) == [(first, 0), (second, 1)]
    assert len(table) == 0
    assert not table.join_or_lead(item(FakeJob("c"), seq=1))


def test_forget_removes_only_the_current_leader_of_a_key():
    table = SharedItems()
    old, new = item(FakeJob("a"), seq=1), item(FakeJob("b"), seq=2)
    table.join_or_lead(old)
    table.start([old])
    table.join_or_lead(new)  # the key is led again: the old item had started
    table.forget([old])
    assert len(table) == 1
    assert table.join_or_lead(item(FakeJob("c"), seq=3)) and len(new.targets) == 2
    table.clear()
    assert len(table) == 0


def test_an_input_either_joins_before_the_start_or_not_at_all():
    """Joins racing a batch's start: every input that joined is among the targets handed out."""
    for _ in range(200):
        table, leader = SharedItems(), item(FakeJob("a"))
        table.join_or_lead(leader)
        joined = []

        def join(n, table=table, joined=joined):
            if table.join_or_lead(item(FakeJob(str(n)), seq=n + 1)):
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
