# One image for the API and the workers. torch comes from PyPI: its Linux x86_64 wheels are CUDA builds
# (the CUDA runtime arrives as nvidia-* wheels), so the same image runs GPU workers (with the NVIDIA
# container runtime), CPU workers and the API. torch >= 2.10 is a floor (README "Security"); the service
# refuses to start below it.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RVSM_DATA_DIR=/data MPLBACKEND=Agg
WORKDIR /app

# dependencies first (cached layers): torch, then the rest (the pin range accepts the torch installed)
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY rvsm/__init__.py rvsm/__init__.py
RUN pip install ".[postgres]" && pip uninstall -y rvsm-service

COPY rvsm rvsm
COPY jobs jobs
COPY service service
COPY worker worker
RUN pip install --no-deps . && useradd --create-home rvsm && mkdir -p /data && chown rvsm /data
USER rvsm
VOLUME ["/data"]
EXPOSE 8000

# API by default; workers run `rvsm worker --queues gpu` / `--queues cpu` (see docker-compose.yml)
CMD ["rvsm", "serve", "--host", "0.0.0.0", "--port", "8000"]
