"""bench/replay.py reads the batches a worker ran from its log."""

from bench.replay import batches_in_log

# Lines as the batcher (tasks/batcher.py) writes them, with the ids Celery's handler adds.
LOG = """\
[2026-12-07 08:59:25,349: INFO/MainProcess] minilm: forward cost {'call_ms': 6.953}; best batch at 32 tokens: 35 items
[2026-12-07 08:59:26,143: INFO/MainProcess] batch: minilm, 1 items, longest 48 tokens, 48 padded tokens (48 real), \
1 job(s), forward 35.9 ms on 2 threads [model=minilm job=c0a5cfdd req=6445]
[2026-12-07 08:59:26,187: INFO/MainProcess] batch: tiny-embed, 3 items, longest 9 tokens, 27 padded tokens (20 real), \
3 job(s), forward 1.8 ms on 1 thread [model=tiny-embed jobs=a,b,c]
[2026-12-07 08:59:26,230: INFO/MainProcess] batch: minilm, 16 items, longest 33 tokens, 528 padded tokens (457 real), \
16 job(s), forward 81.8 ms on 2 threads [model=minilm jobs=d,e]
"""


def test_the_forward_passes_of_one_model_in_order():
    assert batches_in_log(LOG, "minilm") == [(1, 48), (16, 33)]
    assert batches_in_log(LOG, "tiny-embed") == [(3, 9)]
    assert batches_in_log(LOG, "other") == []
