# Beam custom SDK container with this project installed, for `--sdk_container_image` on Dataflow and
# for Flink / Spark job servers (`--environment_type=DOCKER --environment_config=IMAGE`).
#
#   CPU:  docker build --target cpu -t REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:cpu .
#   GPU:  docker build --target gpu -t REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:gpu .
#   GPU with a preset's models inside (no worker downloads them; needs the hub while building):
#         docker build --target gpu-models --build-arg PRESET=datacompdr12m -t ...:gpu-datacompdr12m .
#   push: docker push REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:TAG
#
# The Beam SDK version must equal the one the job is launched with (requirements.txt pins 2.77.0).
#
# Both stages are the Beam SDK image (its Python, its boot loader) plus our pinned dependencies; they
# differ only in the torch build. The GPU stage needs no CUDA base image: the CUDA torch wheel brings
# the CUDA runtime, cuBLAS and cuDNN as nvidia-* wheels, and the driver comes from the host
# (Dataflow's `install-nvidia-driver`, or the NVIDIA container toolkit under `docker run --gpus`).
# Not built here (no Docker engine where it was written): see docs/cluster.md, "What was tested".
ARG BEAM_IMAGE=apache/beam_python3.11_sdk:2.77.0

# The project's code, copied into each stage after its (slow, cached) dependency layer.
FROM scratch AS source
COPY shards /src/shards
COPY pipeline /src/pipeline
COPY teachers /src/teachers
COPY transforms /src/transforms
COPY beam_jobs /src/beam_jobs
COPY inspection /src/inspection
COPY trainer /src/trainer

FROM ${BEAM_IMAGE} AS base
WORKDIR /opt/datacompdr-reinforce
# The C extensions of the standard library that our dependencies import (XML, SQLite, compression,
# TLS, ctypes): a Python without one fails on the worker at import time, so the build fails instead.
RUN python -c "import bz2, ctypes, lzma, pyexpat, sqlite3, ssl, zlib"
COPY requirements.txt requirements-dev.txt requirements-pillow.txt setup.py README.md ./

# ---- CPU workers: the CPU build of torch (PyPI's Linux torch is the CUDA build, GBs of libraries).
# `==2.14.1` in requirements.txt accepts the local version `2.14.1+cpu` (PEP 440), so the next
# install keeps it. Pillow goes on last, apart: see requirements-pillow.txt.
FROM base AS cpu
RUN pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1+cpu torchvision==0.29.1+cpu \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-pillow.txt
COPY --from=source /src ./
RUN pip install --no-cache-dir --no-deps . \
    && pip check | grep -v '^apache-beam [0-9.]* has requirement pillow<13' | (! grep .) \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__" \
    && python -c "import PIL, shards, pipeline, teachers, transforms, beam_jobs, inspection, trainer; \
assert PIL.__version__ == '13.0.0'"
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---- GPU workers: a CUDA build of torch. It must suit the workers' NVIDIA driver: a cu130 build
# needs a driver for CUDA 13 (>= 580), cu12x builds run on drivers >= 525. On a driver that is too
# old the job stops at start with the driver's version (teachers.devices), never silently on CPU.
FROM base AS gpu
ARG TORCH_CUDA=cu130
RUN pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/${TORCH_CUDA} \
        torch==2.14.1+${TORCH_CUDA} torchvision==0.29.1+${TORCH_CUDA} \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-pillow.txt
COPY --from=source /src ./
RUN pip install --no-cache-dir --no-deps . \
    && pip check | grep -v '^apache-beam [0-9.]* has requirement pillow<13' | (! grep .) \
    && python -c "import torch; assert torch.version.cuda, torch.__version__" \
    && python -c "import PIL, shards, pipeline, teachers, transforms, beam_jobs, inspection, trainer; \
assert PIL.__version__ == '13.0.0'"
# Where Dataflow mounts the driver's libraries and nvidia-smi (the NVIDIA toolkit puts them on the
# default paths instead); the NVIDIA_* variables ask the container toolkit for the GPUs.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib PATH=/usr/local/nvidia/bin:${PATH}
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---- GPU workers with one preset's teachers and captioner in the image's hub cache: loading them
# once here downloads them; at run time the hub is off, so every worker reads them from the image.
FROM gpu AS gpu-models
ARG PRESET=datacompdr12m
ENV HF_HOME=/opt/models/huggingface
RUN python -c "import sys; from pipeline.presets import resolve_preset; from teachers import TeacherEnsemble; \
from teachers.captioner import Captioner; p = resolve_preset(sys.argv[1]); \
TeacherEnsemble.load(list(p.teachers)); Captioner.load(p.captioner)" "${PRESET}"
ENV HF_HUB_OFFLINE=1
