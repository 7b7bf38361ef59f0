# paystream: one image for every role (`api`, `worker`, `migrate`); the role is the command.
#   docker build -t paystream .
#   docker run --env-file paystream.env paystream api --host 0.0.0.0 --port 8000
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the build needs (no .venv, .paystream/ dev data, caches or tests in the image).
# README.md is optional: the trailing * lets the build pass whether or not it exists yet.
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY paystream ./paystream

# The runtime package only: no `dev` extra (embedded PostgreSQL, Redis, broker are for
# `paystream dev` and the tests). The source tree is removed once installed.
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin paystream \
    && mkdir /app && chown paystream:paystream /app

WORKDIR /app
USER paystream:paystream

EXPOSE 8000

ENTRYPOINT ["paystream"]
CMD ["--help"]
