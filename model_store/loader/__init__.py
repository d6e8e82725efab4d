"""Loading models and running batches: the only package that imports transformers.

A runner per task family (base.Runner): our own forward for
feature-extraction, question answering and sequence-to-sequence generation
(transformers 5 removed those pipelines), and transformers' pipelines for
text-classification, token-classification, fill-mask,
zero-shot-classification and text-generation.
"""

from __future__ import annotations

import logging

from common.errors import ValidationFailed
from model_store.loader.base import Encoding, Runner, jsonable
from model_store.store import ModelInfo

log = logging.getLogger(__name__)

__all__ = ["Encoding", "Runner", "jsonable", "load_runner", "runner_class"]


def runner_class(task: str):
    from model_store.loader.embeddings import FeatureExtractionRunner
    from model_store.loader.pipelines import PIPELINE_TASKS, PipelineRunner
    from model_store.loader.qa import QuestionAnsweringRunner
    from model_store.loader.seq2seq import SEQ2SEQ_TASKS, Seq2SeqRunner

    if task == FeatureExtractionRunner.task:
        return FeatureExtractionRunner
    if task == QuestionAnsweringRunner.task:
        return QuestionAnsweringRunner
    if task in SEQ2SEQ_TASKS:
        return Seq2SeqRunner
    if task in PIPELINE_TASKS:
        return PipelineRunner
    return None


def load_runner(info: ModelInfo, device: str, task: str | None = None) -> Runner:
    """Load the model behind `info` onto `device` for `task` (default: its config's)."""
    task = task or info.task
    cls = runner_class(task or "")
    if cls is not None and cls.task == "feature-extraction" and info.extra.get("stand_in_forward_s"):
        from model_store.loader.standin import StandInRunner

        cls = StandInRunner  # a benchmark's stand-in: each batch lasts a fixed time
    if cls is None:
        raise ValidationFailed(f"model {info.model_id!r} has task {task!r}, which this worker does not serve")
    log.info("loading %s (%s) on %s", info.model_id, task, device)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return cls(info, device, task)
