"""feature-extraction's tokenizing straight through the Rust backend (model_store/loader/embeddings.py).

The worker tokenizes each job with a configured copy of the fast
tokenizer's backend instead of transformers' call; every id must be the
one transformers gives, on real English text (CPython's pydoc topics),
text past the model's limit, and the demo models' different tokenizers
(WordPiece, byte-level BPE, BART's).
"""

from pydoc_data.topics import topics

import pytest
from transformers import AutoTokenizer

from model_store.loader import load_runner
from model_store.loader.embeddings import PROBES, direct_tokenizer, transformers_ids
from model_store.store import ModelStore

# Paragraphs of every topic (a few thousand texts with code, quotes and symbols), and 100 whole topics (long).
TEXTS = ([part.strip() for text in topics.values() for part in text.split("\n\n") if part.strip()]
         + sorted(topics.values())[:100])


@pytest.mark.parametrize("model_id", ["minilm", "sentiment_model", "tiny-ner", "tiny-gpt2", "tiny-bart"])
def test_the_direct_tokenizer_gives_the_ids_transformers_gives(model_dir, model_id):
    tokenizer = AutoTokenizer.from_pretrained(model_dir / model_id, local_files_only=True)
    max_length = 128  # many of the texts are longer: truncation is exercised
    direct = direct_tokenizer(tokenizer, max_length)
    assert direct is not None, f"{model_id}: the direct tokenizer disagreed with transformers on {PROBES}"
    assert len(TEXTS) > 1000 and sum(len(t) > 2000 for t in TEXTS) >= 40
    got = [enc.ids for enc in direct.encode_batch(TEXTS)]
    expected = [list(ids) for ids in transformers_ids(tokenizer, TEXTS, max_length)]
    differ = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not differ, f"{model_id}: {len(differ)} of {len(TEXTS)} texts differ, the first: {TEXTS[differ[0]][:200]!r}"
    assert max(len(ids) for ids in got) == max_length


def test_a_tokenizer_the_copy_disagrees_with_keeps_transformers_call(model_dir):
    """Where the backend's copy would encode a probe otherwise, the runner keeps transformers' call."""
    real = AutoTokenizer.from_pretrained(model_dir / "minilm", local_files_only=True)

    class Disagreeing:
        is_fast = True
        backend_tokenizer = real.backend_tokenizer
        truncation_side = "right"

        def __call__(self, texts, **kwargs):  # what a tokenizer with Python-side processing might return
            return {"input_ids": [[101, 102] for _ in texts]}

    assert direct_tokenizer(Disagreeing(), 128) is None
    assert direct_tokenizer(object(), 128) is None  # not a fast tokenizer at all


def test_the_runner_encodes_jobs_with_it_and_long_inputs_as_before(model_dir):
    runner = load_runner(ModelStore(model_dir).describe("minilm"), "cpu")
    assert runner._direct is not None
    texts = TEXTS[:300] + ["word " * 1000]
    got = runner.encode(texts, {"truncate": True})
    expected = [list(ids) for ids in transformers_ids(runner.tokenizer, texts, runner.max_length)]
    assert [enc.ids for enc in got] == expected
    assert [enc.length for enc in got] == [len(enc.ids) for enc in got]
    assert got[-1].length == runner.max_length
    # truncate off: transformers' call, and a clear error past the limit
    assert [enc.ids for enc in runner.encode(texts[:5], {"truncate": False})] == [enc.ids for enc in got[:5]]
    with pytest.raises(Exception, match="tokens; the model takes at most"):
        runner.encode(["word " * 1000], {"truncate": False})
