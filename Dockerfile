# One image for the API and the workers. The base carries a CUDA build of PyTorch, so the same
# image runs GPU workers (with the NVIDIA container runtime) and CPU workers and the API.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RVSM_DATA_DIR=/data MPLBACKEND=Agg
WORKDIR /app

# dependencies first (cached layer); torch is already in the base image and satisfies the pin range
COPY pyproject.toml README.md ./
COPY rvsm/__init__.py rvsm/__init__.py
RUN pip install --no-cache-dir ".[postgres]" && pip uninstall -y rvsm-service

COPY rvsm rvsm
COPY service service
COPY worker worker
RUN pip install --no-cache-dir --no-deps . && useradd --create-home rvsm && mkdir -p /data && chown rvsm /data
USER rvsm
VOLUME ["/data"]
EXPOSE 8000

# API by default; workers run `rvsm worker --queues gpu` / `--queues cpu` (see docker-compose.yml)
CMD ["rvsm", "serve", "--host", "0.0.0.0", "--port", "8000"]
