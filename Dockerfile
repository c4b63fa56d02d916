# Beam custom SDK container with this project installed, for `--sdk_container_image` on Dataflow and
# for Flink / Spark job servers (`--environment_type=DOCKER --environment_config=IMAGE`).
#
#   CPU:  docker build --target cpu -t REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:cpu .
#   GPU:  docker build --target gpu -t REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:gpu .
#   push: docker push REGION-docker.pkg.dev/PROJECT/REPO/datacompdr-reinforce:{cpu,gpu}
#
# The Beam SDK version must equal the one the job is launched with (requirements.txt pins 2.77.0).
ARG BEAM_IMAGE=apache/beam_python3.11_sdk:2.77.0
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BEAM_IMAGE} AS beam

# ---- CPU workers: the Beam image itself, plus the pinned dependencies and the project.
FROM ${BEAM_IMAGE} AS cpu
WORKDIR /opt/datacompdr-reinforce
COPY requirements.txt setup.py README.md ./
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 -r requirements.txt && pip check
COPY pipeline ./pipeline
COPY teachers ./teachers
COPY transforms ./transforms
COPY beam_jobs ./beam_jobs
COPY trainer ./trainer
RUN pip install --no-cache-dir --no-deps . && python -c "import pipeline, teachers, transforms, beam_jobs, trainer"
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---- GPU workers: a CUDA base with the Beam boot loader and Python copied from the Beam image.
# Ubuntu 24.04's glibc is newer than the Debian one the Beam image's Python was built on.
FROM ${CUDA_IMAGE} AS gpu
COPY --from=beam /usr/local /usr/local
COPY --from=beam /opt/apache/beam /opt/apache/beam
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 libffi8 zlib1g ca-certificates \
    && rm -rf /var/lib/apt/lists/* && ldconfig
WORKDIR /opt/datacompdr-reinforce
COPY --from=cpu /opt/datacompdr-reinforce /opt/datacompdr-reinforce
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 -r requirements.txt \
    && pip install --no-cache-dir --no-deps . && pip check
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENTRYPOINT ["/opt/apache/beam/boot"]
