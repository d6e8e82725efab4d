"""Reading task messages as jobs: what the webapp sends, and what it must refuse."""

import json

import pytest
from kombu.message import Message

from tasks.jobs import InvalidJob, job_from_message


def message(args=(), kwargs=None, job_id="job-1", reply_to="atf:replies:x", content_type="application/json"):
    body = json.dumps([list(args), kwargs or {}, {}]).encode()
    msg = Message(body=body, content_type=content_type, content_encoding="utf-8",
                  headers={"id": job_id, "task": "tasks.infer"} if job_id else {"task": "tasks.infer"},
                  properties={"reply_to": reply_to})
    msg.accept = ["application/json"]
    return msg


def test_webapp_message():
    job = job_from_message(message(kwargs={"model_id": "minilm", "inputs": ["a", "b"],
                                           "parameters": {"pooling": "mean"}, "is_list": True}))
    assert (job.id, job.model_id, job.inputs, job.is_list, job.reply_to) == (
        "job-1", "minilm", ["a", "b"], True, "atf:replies:x")
    assert job.remaining == 2 and job.outputs == [None, None]


def test_positional_call_with_a_single_input():
    """`infer.delay("minilm", "text")` from a plain Celery client works too."""
    job = job_from_message(message(args=("minilm", "text")))
    assert job.inputs == ["text"] and job.is_list is False and job.result() is None


@pytest.mark.parametrize("kwargs", [
    {"inputs": ["a"]},
    {"model_id": "m", "inputs": []},
    {"model_id": "m", "inputs": ["a"], "parameters": [1]},
    {"model_id": "m", "inputs": ["a"], "surprise": 1},
])
def test_invalid_jobs_keep_their_id(kwargs):
    with pytest.raises(InvalidJob) as info:
        job_from_message(message(kwargs=kwargs))
    assert info.value.job_id == "job-1"


def test_pickle_is_refused():
    """Only JSON is accepted: a pickled body never reaches the loader."""
    msg = message(kwargs={"model_id": "m", "inputs": ["a"]}, content_type="application/x-python-serialize")
    with pytest.raises(InvalidJob, match="decode"):
        job_from_message(msg)
