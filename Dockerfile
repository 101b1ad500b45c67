# digitgen: the HTTP service on the shipped weights.
#   docker build -t digitgen .
#   docker run -p 8000:8000 digitgen
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Locked dependencies first (exact versions, every file's hash checked), then
# the code, weights last: a retrained model rebuilds one layer.
COPY requirements.lock ./
RUN python3 -m pip install --no-compile --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY app ./app
COPY bench ./bench
COPY digitgen ./digitgen
RUN python3 -m pip install --no-compile --no-deps . \
 && useradd --system --create-home --uid 10001 digitgen
COPY weights ./weights

USER digitgen
ENV DIGITGEN_WEIGHTS=/app/weights \
    DIGITGEN_HOST=0.0.0.0 \
    DIGITGEN_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DIGITGEN_PORT', '8000'), timeout=4)"
# `digitgen serve` reads every DIGITGEN_* setting, HTTP limits included (app/config.py)
CMD ["digitgen", "serve"]
