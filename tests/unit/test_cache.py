"""Cache keys and the level-1 bounds."""

from common.cache_keys import cache_key
from common.settings import Settings
from webapp.response_cache import ResponseCache


def test_keys_change_with_every_part_and_ignore_key_order():
    base = cache_key("fp1", "feature-extraction", "hello", {"normalize": False, "pooling": "mean"})
    assert base == cache_key("fp1", "feature-extraction", "hello", {"pooling": "mean", "normalize": False})
    assert base != cache_key("fp2", "feature-extraction", "hello", {"normalize": False, "pooling": "mean"})
    assert base != cache_key("fp1", "text-classification", "hello", {"normalize": False, "pooling": "mean"})
    assert base != cache_key("fp1", "feature-extraction", "hello!", {"normalize": False, "pooling": "mean"})
    assert base != cache_key("fp1", "feature-extraction", "hello", {"normalize": True, "pooling": "mean"})


class NoRedis:
    def mget(self, keys):
        return [None] * len(keys)


def test_level_one_is_bounded_by_entries_and_bytes():
    cache = ResponseCache(Settings(cache_l1_items=3, cache_l1_bytes=10_000), NoRedis())
    cache.remember_outputs([f"k{i}" for i in range(5)], [[i] * 10 for i in range(5)])
    found, _ = cache.lookup("m", [f"k{i}" for i in range(5)])
    assert len(found) == 3 and set(found) == {2, 3, 4}  # the least recently used went first
    small = ResponseCache(Settings(cache_l1_items=100, cache_l1_bytes=1024), NoRedis())
    small.remember_outputs([f"k{i}" for i in range(10)], [[0.123456789] * 20 for _ in range(10)])
    assert len(small.lookup("m", [f"k{i}" for i in range(10)])[0]) < 10  # bytes bound
