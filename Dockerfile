# One image per service, for people with Docker (docker-compose.yml); the local run (`make run`)
# starts the same modules with the same environment variables.
FROM python:3.11-slim
ARG SERVICE
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
RUN uv sync --locked --no-dev --package aftercare-${SERVICE}
ENV SERVICE=${SERVICE}
CMD ["sh", "-c", "exec /app/.venv/bin/python -m aftercare.${SERVICE}"]
