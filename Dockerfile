# One image for the user-code server, webserver, daemon and embeddings server (see docker-compose.yml).
# --build-arg EXTRAS=gpu swaps in the CUDA builds (onnxruntime-gpu, faiss-gpu) and TensorRT for GPU hosts;
# EXTRAS=k8s adds dagster-k8s for the Helm deployment (deploy/helm); EXTRAS=gpu,k8s both.
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /app
ENV HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True DAGSTER_HOME=/opt/dagster/home \
    EMBED_PIPELINE_ARTIFACTS=/data/artifacts PATH=/app/.venv/bin:$PATH
COPY pyproject.toml requirements.lock ./
COPY scripts ./scripts
COPY embed_pipeline ./embed_pipeline
RUN bash scripts/setup.sh && case ",$EXTRAS," in *,gpu,*) pip uninstall -y onnxruntime faiss-cpu;; esac \
    && if [ -n "$EXTRAS" ]; then pip install --no-cache-dir -e ".[$EXTRAS]"; fi
COPY workspace.yaml ./
RUN mkdir -p $DAGSTER_HOME && cp embed_pipeline/instance/dagster.postgres.yaml $DAGSTER_HOME/dagster.yaml
