# sagan in a container: the `sagan` command with torch 2.14.1 (CUDA 13.0 wheels) and every pinned
# dependency of constraints.txt. docs/scale-out.md says how to build, run and deploy it, and what of
# that was never run where this file was written (no Docker daemon, no registry access there).
#
# The torch wheel brings its own CUDA 13.0 runtime, cuDNN and NCCL (the nvidia-* pins in
# constraints.txt); the host needs an NVIDIA driver for CUDA 13.0 (>= 580) and the NVIDIA
# container toolkit (`docker run --gpus all`, Kubernetes' nvidia.com/gpu).
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

# Ubuntu 24.04's python3 is 3.12 (pyproject: >=3.11,<3.13); git for `git_clone` pull steps, the
# lineage tags and DVC.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first (their layer survives code changes), exactly the pinned versions.
WORKDIR /opt/sagan
COPY constraints.txt pyproject.toml README.md LICENSE ./
RUN python3 -m venv /opt/venv \
    && pip install -c constraints.txt torch torchvision
COPY sagan_core ./sagan_core
COPY pipelines ./pipelines
RUN pip install -c constraints.txt . && sagan --version

# Not root. The project lives in /work/project (a mounted checkout, or the git_clone of a
# Prefect/Kubernetes run); nothing secret is in this image: MLflow, S3 and webhook credentials
# come from the environment at run time (docker run -e / --env-file, Kubernetes Secrets).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin sagan \
    && mkdir -p /work/project /torch \
    && chown sagan:sagan /work/project /torch
USER sagan
WORKDIR /work/project

# FID's Inception weights (pt_inception-2015-12-05-6726825d.pth under hub/checkpoints/): mount
# them, e.g. `-v ~/.cache/torch:/torch:ro`; sagan never fetches them itself.
ENV TORCH_HOME=/torch
VOLUME ["/torch"]

ENTRYPOINT ["sagan"]
CMD ["--help"]
