"""Fair shares of the device between models: FairShare picks the next lane."""

from types import SimpleNamespace

from tasks.fairness import FairShare


def lane(name, first_seq):
    """A lane with work waiting, its oldest item arrived `first_seq`-th."""
    return SimpleNamespace(name=name, served_s=0.0, last_turn=-1, waiting=[SimpleNamespace(seq=first_seq)])


def run(share, ready, seconds):
    """Pick a lane among `ready`, charge it its batch's time; its name.

    `seconds` is a number, or a dict giving each lane's batch time by name.
    """
    chosen = share.pick(ready)
    share.charge(chosen, seconds[chosen.name] if isinstance(seconds, dict) else seconds)
    return chosen.name


def test_a_model_arriving_behind_a_long_backlog_runs_after_the_batch_in_flight():
    """The 80 s wait: minilm's job came after 256 tiny-bart items; it now runs next, not after all of them."""
    share = FairShare()
    bart, minilm = lane("bart", 0), lane("minilm", 256)
    assert run(share, [bart], 3.0) == "bart"  # minilm had no work yet
    assert run(share, [bart, minilm], 0.01) == "minilm"


def test_models_with_work_share_the_device_time_not_the_batch_count():
    """A model of short batches runs until it has had as much time as the model of long ones."""
    share = FairShare()
    slow, fast = lane("slow", 0), lane("fast", 1)
    order = [run(share, [slow, fast], {"slow": 1.0, "fast": 0.3}) for _ in range(6)]
    assert order == ["slow", "fast", "fast", "fast", "fast", "slow"]


def test_idle_time_earns_no_credit():
    """A model idle for a long time runs next, but then takes turns instead of holding the device."""
    share = FairShare()
    busy, idle = lane("busy", 0), lane("idle", 1)
    for _ in range(100):
        run(share, [busy], 1.0)  # 100 s of busy alone
    picks = [run(share, [busy, idle], 1.0) for _ in range(4)]
    assert picks == ["idle", "busy", "idle", "busy"]


def test_one_model_alone_always_runs():
    share = FairShare()
    only = lane("only", 0)
    assert [run(share, [only], 0.5) for _ in range(3)] == ["only"] * 3
    assert share.pick([]) is None


def test_on_a_tie_the_oldest_item_goes_first():
    share = FairShare()
    assert share.pick([lane("late", 5), lane("early", 2)]).name == "early"
