# One image for every role: webapp, worker, Flower (the command picks).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MODEL_DIR=/models \
    HOST=0.0.0.0 \
    FLOWER_CREDENTIALS_FILE=/data/flower-credentials

WORKDIR /app

# CPU wheels of torch by default (small); for CUDA workers build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt
# OpenTelemetry tracing (README, "Tracing"): --build-arg WITH_OTEL=1; off by default.
ARG WITH_OTEL=0
COPY requirements-otel.txt .
RUN if [ "${WITH_OTEL}" = 1 ]; then pip install --no-cache-dir -r requirements-otel.txt; fi

# Every role runs as an unprivileged user that owns only the models and its data.
RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /models /data \
    && chown app:app /models /data
COPY . .
USER app
# The demo models are part of the image; a named volume on /models starts as a copy of them.
RUN python -m model_store build-demo

EXPOSE 8000 5555
CMD ["gunicorn", "webapp:create_app()"]
