"""The workers' statistics hash: what a batch adds is what /metrics reads back; a scrape survives Redis down."""

from common import batchstats
from common.batchstats import BatchStats
from tests.helpers import make_client


class Fields:
    """Stands for the pipeline: applies HINCRBY / HINCRBYFLOAT to a dict, as Redis would."""

    def __init__(self):
        self.fields, self.sets = {}, {}

    def hincrby(self, key, name, amount):
        self.fields[name] = self.fields.get(name, 0) + amount

    hincrbyfloat = hincrby

    def sadd(self, key, member):
        self.sets.setdefault(key, set()).add(member)


def test_observations_land_in_their_buckets_and_read_back_cumulative():
    """0.003 s and 0.5 s and 999 s: cumulative buckets 1, 2, 2 ... 3 at +Inf; sum and count kept."""
    stats = BatchStats()
    for value in (0.003, 0.5, 999.0):
        stats.observe(batchstats.QUEUE_SECONDS, value)
    pipe = Fields()
    stats.write(pipe, "minilm")
    buckets, total, count = batchstats.histogram(pipe.fields, batchstats.QUEUE_SECONDS)
    by_bound = dict(buckets)
    assert by_bound["0.005"] == 1 and by_bound["0.25"] == 1 and by_bound["0.5"] == 2 and by_bound["300.0"] == 2
    assert by_bound["+Inf"] == 3 == count
    assert total == 999.503
    assert "minilm" in pipe.sets["atf:models"]


def test_a_batch_adds_its_size_tokens_and_failures():
    """Two items of 3 and 5 tokens pad to 10: padding ratio 0.2; a failure counts under its type."""
    stats = BatchStats()
    stats.batch(size=2, passes=1, forward_s=0.25, tokens=8, padded_tokens=10)
    stats.failed("validation_error")
    pipe = Fields()
    stats.write(pipe, "minilm")
    assert pipe.fields["size:2"] == 1 and pipe.fields["items"] == 2
    assert batchstats.padding_ratio(pipe.fields) == 0.2
    assert batchstats.failures(pipe.fields) == {"validation_error": 1}
    assert batchstats.padding_ratio({}) is None


def test_a_scrape_answers_when_redis_is_down(model_dir):  # noqa: F811
    """Nothing listens where Redis should be: /metrics still answers 200 with the API's own metrics."""
    client = make_client(model_dir)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"atf_http_requests_total" in response.data
    assert b"atf_workers_up" not in response.data
