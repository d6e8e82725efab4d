"""Tiny random-weight models, one per task family, for tests that run in seconds.

Small configs (2 layers, 32 wide), real tokenizers: minilm's WordPiece for
the BERT-style encoders, and a byte-level BPE trained here on the text
CPython ships (pydoc_data.topics) for GPT-2 and BART. Deterministic: fixed
seeds; a few MB each. Their answers are random, their shapes are real.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
SMALL_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=512)
BPE_VOCAB = 2000


def copy_bert_tokenizer(minilm: Path, target: Path) -> None:
    """minilm's WordPiece tokenizer files into `target` (the tiny BERTs, the fine-tuned sentiment model)."""
    for name in BERT_TOKENIZER_FILES:
        shutil.copy(minilm / name, target / name)


def _bert(cls_name: str, target: Path, minilm: Path, **config) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**SMALL_BERT, **config))
    model.save_pretrained(target)
    copy_bert_tokenizer(minilm, target)


def _labels(*names: str) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def build_ner(target: Path, minilm: Path) -> None:
    _bert("BertForTokenClassification", target, minilm, **_labels("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))


def build_qa(target: Path, minilm: Path) -> None:
    _bert("BertForQuestionAnswering", target, minilm)


def build_fill_mask(target: Path, minilm: Path) -> None:
    _bert("BertForMaskedLM", target, minilm)


def build_zero_shot(target: Path, minilm: Path) -> None:
    """An NLI classifier (entailment / neutral / contradiction): what zero-shot classification runs on."""
    _bert("BertForSequenceClassification", target, minilm, **_labels("entailment", "neutral", "contradiction"))


def _bpe_tokenizer(target: Path) -> None:
    from pydoc_data.topics import topics

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["\n".join(topics.values())], vocab_size=BPE_VOCAB, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=256)
    tokenizer.save_pretrained(target)


def build_gpt2(target: Path, minilm: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=BPE_VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=2, pad_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(target)
    _bpe_tokenizer(target)


def _bart(target: Path, **extra) -> None:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(vocab_size=BPE_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=256, bos_token_id=0, pad_token_id=1,
                        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, **extra)
    BartForConditionalGeneration(config).save_pretrained(target)
    _bpe_tokenizer(target)


def build_bart(target: Path, minilm: Path) -> None:
    _bart(target)


def build_summarization(target: Path, minilm: Path) -> None:
    _bart(target, task_specific_params={"summarization": {"max_new_tokens": 32}})


def build_translation(target: Path, minilm: Path) -> None:
    _bart(target, task_specific_params={"translation_en_to_fr": {"max_new_tokens": 32}})
