"""A stock Celery app with a task named as ours, for the wire contract (test_wire_contract.py).

Started as `celery -A tests.integration.stock_celery worker`. A module of
its own, importing nothing of `tasks`: the project's `tasks.infer` is a
shared task, which Celery would register on this app too, in place of
this one.
"""

import json
import os

import redis
from celery import Celery

from common.protocol import INFER_TASK
from common.requestid import REQUEST_ID_KEY

URL_ENV = "WIRE_CONTRACT_REDIS_URL"  # the broker and result backend, set by the test
RAN_KEY = "wire-contract:ran"  # list: one JSON record per call

app = Celery("stock", set_as_current=False)
app.conf.update(broker_url=os.environ.get(URL_ENV, "redis://"), result_backend=os.environ.get(URL_ENV, "redis://"),
                task_serializer="json", accept_content=["json"], result_serializer="json")


@app.task(name=INFER_TASK, bind=True, shared=False)
def infer(self, model_id, inputs, parameters=None, is_list=None, use_cache=True, prefilled=None):
    """Stands for our worker: records its call, returns a stand-in result (or fails for model `fail`)."""
    if model_id == "fail":
        raise ValueError("boom")
    redis.Redis.from_url(self.app.conf.broker_url).rpush(RAN_KEY, json.dumps({
        "id": self.request.id, "model_id": model_id, "inputs": inputs, "parameters": parameters,
        "is_list": is_list, "reply_to": self.request.reply_to, "request_id": self.request.get(REQUEST_ID_KEY),
    }))
    return [len(item) for item in inputs]
