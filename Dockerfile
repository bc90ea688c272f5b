# Unbuilt on the development machines (no Docker engine there); linted by
# hadolint in `make test`. The steps follow the Makefile: a venv, an install
# of this project, then `verified-urls serve` (which migrates first).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN useradd --create-home --uid 10001 verified-urls \
    && python -m venv /app/.venv \
    && /app/.venv/bin/pip install --no-cache-dir --upgrade pip==24.3.1

COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN /app/.venv/bin/pip install --no-cache-dir -e . \
    && mkdir -p /app/data \
    && chown -R verified-urls /app/data

USER 10001
EXPOSE 8000
# Point VERIFIED_URLS_S3_ENDPOINT_URL and VERIFIED_URLS_DATABASE_URL at real
# services in production; without them the embedded store and SQLite are used.
CMD ["verified-urls", "serve", "--host", "0.0.0.0", "--port", "8000"]
