"""Reading task messages as jobs: what the webapp sends, and what it must refuse."""

import base64
import json

import pytest

from common import envelope
from common.envelope import Envelope
from tasks.job import InvalidJob, job_from_envelope


def message(args=(), kwargs=None, job_id="job-1", reply_to="atf:replies:x", content_type="application/json",
            body=None):
    if body is None:
        body = json.dumps([list(args), kwargs or {}, {}]).encode()
    return Envelope(headers={"id": job_id, "task": "tasks.infer"} if job_id else {"task": "tasks.infer"},
                    properties={"reply_to": reply_to}, content_type=content_type, body=body)


def test_webapp_message():
    job = job_from_envelope(message(kwargs={"model_id": "minilm", "inputs": ["a", "b"],
                                           "parameters": {"pooling": "mean"}, "is_list": True}))
    assert (job.id, job.model_id, job.inputs, job.is_list, job.reply_to) == (
        "job-1", "minilm", ["a", "b"], True, "atf:replies:x")
    assert job.remaining == 2 and job.outputs == [None, None]


def test_positional_call_with_a_single_input():
    """`infer.delay("minilm", "text")` from a plain Celery client works too."""
    job = job_from_envelope(message(args=("minilm", "text")))
    assert job.inputs == ["text"] and job.is_list is False and job.result() is None


@pytest.mark.parametrize("kwargs", [
    {"inputs": ["a"]},
    {"model_id": "m", "inputs": []},
    {"model_id": "m", "inputs": ["a"], "parameters": [1]},
    {"model_id": "m", "inputs": ["a"], "surprise": 1},
])
def test_invalid_jobs_keep_their_id(kwargs):
    with pytest.raises(InvalidJob) as info:
        job_from_envelope(message(kwargs=kwargs))
    assert info.value.job_id == "job-1"


def test_pickle_is_refused():
    """Only JSON is accepted: a pickled body never reaches the loader."""
    msg = message(kwargs={"model_id": "m", "inputs": ["a"]}, content_type="application/x-python-serialize")
    with pytest.raises(InvalidJob, match="decode"):
        job_from_envelope(msg)


@pytest.mark.parametrize("body", [
    b'[[],[1,2],{}]', b'[[],"abc",{}]', b'[5,{},{}]', b'[null,null,null]', b'[[],7,{}]', b'[]', b'{}', b'7',
    b'[["m",["a"]],{"model_id":"m"},{}]', b'[[],{"model_id":"m","inputs":["a"],"is_list":"yes"},{}]',
    b'[[],{"model_id":"m","inputs":["a"],"prefilled":[1]},{}]', b'[[],{"model_id":"m","inputs":["a"],'
    b'"prefilled":{"x":1}},{}]', b'[[],{"model_id":"m","inputs":["a"],"use_cache":"no"},{}]',
    b'[[],{"model_id":["m"],"inputs":["a"]},{}]', b'[[],{"model_id":"m"},{}]', b'\xff\xfe', b'',
])
def test_any_malformed_body_is_an_invalid_job_never_a_crash(body):
    """Bodies from the adversarial pass (each killed the worker before) are refused with their id."""
    with pytest.raises(InvalidJob) as info:
        job_from_envelope(message(body=body))
    assert info.value.job_id == "job-1"


def test_another_task_name_is_refused():
    msg = message(kwargs={"model_id": "m", "inputs": ["a"]})
    msg.headers["task"] = "os.system"
    with pytest.raises(InvalidJob, match="is not tasks.infer"):
        job_from_envelope(msg)


def test_envelope_round_trip():
    """What the webapp writes reads back as the same job."""
    raw = envelope.write("job-9", "infer.m", {"model_id": "m", "inputs": ["a"], "is_list": True}, "r", "origin")
    job = job_from_envelope(envelope.read(raw))
    assert (job.id, job.model_id, job.inputs, job.reply_to) == ("job-9", "m", ["a"], "r")


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"headers": 1}', b'{"headers": {}, "properties": {}}',
                                 b'{"headers": {}, "properties": {"body_encoding": "base64"}, "body": "@@"}',
                                 b'{"headers": {}, "properties": {"body_encoding": "rot13"}, "body": ""}'])
def test_a_list_element_that_is_no_kombu_message_is_a_bad_envelope(raw):
    with pytest.raises(envelope.BadEnvelope):
        envelope.read(raw)


def test_a_base64_body_is_decoded():
    body = base64.b64encode(b'[[],{},{}]').decode()
    doc = {"headers": {"id": "x"}, "properties": {"body_encoding": "base64"}, "body": body,
           "content-type": "application/json"}
    assert envelope.read(json.dumps(doc).encode()).body == b'[[],{},{}]'


def test_refused_job_reason_quotes_no_input():
    """A refused job's reason is logged: it names what is wrong, never the values."""
    secret = "a private sentence 19c2"
    msg = message(kwargs={"model_id": "m", "inputs": ["a"], "prefilled": {secret: 1}})
    with pytest.raises(InvalidJob) as info:
        job_from_envelope(msg)
    assert secret not in str(info.value)


def test_request_id_and_traceparent_travel_in_the_message_headers():
    """The webapp's envelope carries both ids as task headers; the worker reads them onto the Job."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw = envelope.write("job-9", "infer.m", {"model_id": "m", "inputs": ["a"]}, "r", "origin",
                         extra_headers={"request_id": "req-42", "traceparent": traceparent})
    read = envelope.read(raw)
    assert (read.headers["request_id"], read.headers["traceparent"]) == ("req-42", traceparent)
    job = job_from_envelope(read)
    assert (job.request_id, job.traceparent) == ("req-42", traceparent)


def test_a_message_without_ids_or_with_bad_ones_still_runs():
    """A plain Celery client sends no ids; ids that fail the checks are dropped, the job is kept."""
    assert (job_from_envelope(message(args=("m", "t"))).request_id, None) == (None, None)
    msg = message(args=("m", "t"))
    msg.headers.update(request_id="bad\nid", traceparent="00-xyz")
    job = job_from_envelope(msg)
    assert (job.model_id, job.request_id, job.traceparent) == ("m", None, None)


def test_jobs_share_a_batch_key_only_with_equal_parameters_whatever_their_order():
    """Items batch together by their job's parameters: equal in any key order, and any a client can send."""
    def job(params, job_id="job-1"):
        return job_from_envelope(message(kwargs={"model_id": "minilm", "inputs": "a", "parameters": params},
                                         job_id=job_id))

    a = job({"pooling": "mean", "normalize": True, "extra": {"b": 1, "a": [1, 2]}})
    b = job({"extra": {"a": [1, 2], "b": 1}, "normalize": True, "pooling": "mean"}, "job-2")
    assert a.batch_key == b.batch_key
    assert a.batch_key != job({"pooling": "cls", "normalize": True, "extra": {"b": 1, "a": [1, 2]}}).batch_key
    # an integer past 64 bits (JSON allows it; another client may send it) still keys its job
    huge = job({"max_new_tokens": 2 ** 70})
    assert huge.batch_key == job({"max_new_tokens": 2 ** 70}, "job-3").batch_key != a.batch_key
    huge.use_params({"max_new_tokens": 2 ** 70, "pooling": "mean"})
    assert "1180591620717411303424" in huge.batch_key
