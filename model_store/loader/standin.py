"""The runner of a stand-in model (model_store/standin.py): a tiny forward, then a fixed wait.

Each batch takes `forward_s` in all, whatever its size: the tiny BERT's
real forward pass (outputs of the right shape for feature-extraction),
then `time.sleep` for the rest, which frees the CPU as a GPU kernel would.
"""

from __future__ import annotations

import time

from model_store.loader.embeddings import FeatureExtractionRunner


class StandInRunner(FeatureExtractionRunner):
    """feature-extraction whose batches each last `forward_s` seconds."""

    def __init__(self, info, device: str, task: str | None = None):
        super().__init__(info, device, task)
        self.forward_s = float(info.extra["stand_in_forward_s"])

    def run(self, encodings, params: dict) -> list:
        started = time.perf_counter()
        outputs = super().run(encodings, params)
        time.sleep(max(0.0, self.forward_s - (time.perf_counter() - started)))
        return outputs
