"""bench/accounting.py puts each py-spy sample under the purpose its frames serve."""

import pytest

from bench.accounting import FORWARD, HTTP, RUNTIME, TOKENIZE, cpu_by_purpose, purpose_of, report, shares

GUNICORN = ("Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);"
            "ThreadWorker.handle (gunicorn/workers/gthread.py:553);Flask.wsgi_app (flask/app.py:1511)")
FETCHER = "Thread.run (threading.py:982);RedisSource._run (tasks/sources.py:198)"

# Stacks as py-spy's raw output writes them (root first), with the count of samples.
SAMPLES = [
    # the access line: logging's frames, under Flask's after_request, under gunicorn
    (GUNICORN + ";Flask.process_response (flask/app.py:1310);init_app.<locals>._access_line (webapp/accesslog.py:36);"
     "Logger.info (logging/__init__.py:1489);StreamHandler.emit (logging/__init__.py:1113)", 3, "logs"),
    # Redis under the publisher: the caller names the purpose, not the Redis client
    (GUNICORN + ";predict (webapp/views/predict.py:126);_submit (webapp/views/predict.py:93);"
     "JobService.submit (webapp/job_service.py:140);RedisPublisher.publish (webapp/publisher.py:90);"
     "Pipeline.execute (redis/client.py:2198)", 5, "job record and message"),
    # the request budget, checked in the webapp: a request check
    (GUNICORN + ";predict (webapp/views/predict.py:121);_accept (webapp/views/predict.py:70);"
     "check_request_budget (common/budget.py:40)", 1, "request checks"),
    # the same module's check in the worker, under the tokenizer's call: tokenizing
    (FETCHER + ";Batcher.submit (tasks/batcher.py:130);encode (tasks/lanes.py:128);"
     "check_encoded_budget (common/budget.py:60)", 1, TOKENIZE),
    (FETCHER + ";Batcher.submit (tasks/batcher.py:130);encode (tasks/lanes.py:127);"
     "FeatureExtractionRunner.encode (model_store/loader/embeddings.py:48);"
     "PreTrainedTokenizerBase.__call__ (transformers/tokenization_utils_base.py:2500)", 4, TOKENIZE),
    # transformers' frames under the runner's run: the forward, whatever their module
    ("Thread.run (threading.py:982);Batcher._loop (tasks/batcher.py:222);"
     "FeatureExtractionRunner.run (model_store/loader/embeddings.py:81);"
     "BertModel.forward (transformers/models/bert/modeling_bert.py:673);"
     "Linear.forward (torch/nn/modules/linear.py:134)",
     6, FORWARD),
    # the JSON encoder under kombu under Celery's dispatcher under the reporter: Flower's events
    ("Thread.run (threading.py:982);Reporter._run (tasks/reporting.py:180);"
     "Reporter._publish_events (tasks/reporting.py:320);EventDispatcher.flush (celery/events/dispatcher.py:240);"
     "Producer.publish (kombu/messaging.py:190);JSONEncoder.iterencode (json/encoder.py:258)", 2, "Flower events"),
    ("Thread.run (threading.py:982);Reporter._run (tasks/reporting.py:180);Reporter._store (tasks/reporting.py:231);"
     "Script.__call__ (redis/commands/core.py:10930)", 2, "start, store, ack"),
    # no frame of ours under a purpose: gunicorn's parser is the HTTP server
    ("Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);"
     "ThreadWorker.handle (gunicorn/workers/gthread.py:553);Parser.__next__ (gunicorn/http/parser.py:40)", 4, HTTP),
    ("Thread.run (threading.py:982);Heartbeat._run (tasks/heartbeat.py:80)", 1, RUNTIME),
]


@pytest.mark.parametrize("stack, purpose", [(stack, purpose) for stack, _, purpose in SAMPLES])
def test_a_sample_goes_to_the_purpose_of_the_frames_that_name_one(stack, purpose):
    assert purpose_of(stack.split(";")) == purpose


def test_shares_count_each_sample_once_and_skip_the_process_frame():
    raw = "\n".join(f'process 42:"python -m celery";{stack} {count}' for stack, count, _ in SAMPLES) + "\n"
    got = shares(raw)
    total = sum(count for _, count, _ in SAMPLES)
    assert got["job record and message"] == pytest.approx(5 / total)
    assert got[TOKENIZE] == pytest.approx(5 / total)
    assert sum(got.values()) == pytest.approx(1)


def test_each_process_cpu_is_shared_out_by_its_own_samples():
    by_purpose = cpu_by_purpose({"webapp": {HTTP: 0.75, "logs": 0.25}, "worker": {FORWARD: 1.0}},
                                {"webapp": 2.0, "worker": 0.5})
    assert by_purpose[HTTP] == {"webapp": 1.5, "worker": 0.0}
    assert by_purpose[FORWARD] == {"webapp": 0.0, "worker": 0.5}
    lines = report(by_purpose)
    assert lines[-1] == "| **total** | 2.00 | 0.50 | **2.50** | |"
    assert not any(line.startswith("| metrics |") for line in lines)  # nothing spent on it: no row
