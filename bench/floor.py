"""The HTTP floor: Flask under the project's gunicorn settings, answering POST /predict with no work.

It parses the JSON body as the real endpoint does and answers a JSON object
of the same shape and size as the tiny model's answer (an embedding of 32
floats; FLOOR_FLOATS others, as minilm's 384 for the cache's hits), so the
difference to the real service is the framework's own cost: validation, the
cache, Redis, the worker, the wake-up of the waiting thread.
"""

import os

from flask import Flask, jsonify, request

EMBEDDING = [0.012345678] * int(os.environ.get("FLOOR_FLOATS") or 32)

app = Flask(__name__)


@app.post("/predict")
def predict():
    body = request.get_json()
    return jsonify(job_id="0" * 32, model_id=body["model_id"], status="succeeded", cached=False,
                   outputs=[EMBEDDING])


@app.get("/health/live")
def live():
    return jsonify(status="ok")
