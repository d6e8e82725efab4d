"""Fine-tuning `sentiment_model` from minilm on the labelled sentences in data/sentiment.tsv.

Deterministic (fixed seed, fixed order), a few seconds to a minute on two
CPU cores. Every fifth sentence of each label is held out; the build fails
unless the held-out accuracy reaches MIN_ACCURACY.
"""

from __future__ import annotations

import random
from pathlib import Path

from model_store.tiny import copy_bert_tokenizer

DATA = Path(__file__).parent / "data" / "sentiment.tsv"
LABELS = ("NEGATIVE", "POSITIVE")
MIN_ACCURACY = 0.90
SEED = 0
EPOCHS = 6
BATCH = 16
LEARNING_RATE = 5e-5


def load_examples(path: Path = DATA) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, held_out): every fifth sentence of each label is held out."""
    train, held_out, seen = [], [], {label: 0 for label in LABELS}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, text = line.split("\t", 1)
        seen[label] += 1
        (held_out if seen[label] % 5 == 0 else train).append((text.strip(), LABELS.index(label)))
    return train, held_out


def accuracy(model, tokenizer, examples) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(examples), 64):
            chunk = examples[i:i + 64]
            enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, return_tensors="pt")
            predicted = model(**enc).logits.argmax(dim=-1).tolist()
            correct += sum(p == y for p, (_, y) in zip(predicted, chunk))
    return correct / len(examples)


def fine_tune(base: Path, target: Path, progress) -> float:
    """Train the classifier into `target`; return its held-out accuracy."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    train, held_out = load_examples()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = train[:]
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), BATCH):
            chunk = order[i:i + BATCH]
            enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y for _, y in chunk])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item() * len(chunk)
        progress.say(f"  epoch {epoch}/{EPOCHS}: training loss {total / len(order):.3f}, "
                     f"held-out accuracy {accuracy(model, tokenizer, held_out):.1%}")
    score = accuracy(model, tokenizer, held_out)
    if score < MIN_ACCURACY:
        raise SystemExit(f"sentiment_model: held-out accuracy {score:.1%} is below {MIN_ACCURACY:.0%}; not saved")
    model.save_pretrained(target)
    copy_bert_tokenizer(base, target)
    progress.say(f"  {len(train)} training and {len(held_out)} held-out sentences: "
                 f"held-out accuracy {score:.1%}")
    return score
