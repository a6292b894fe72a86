"""What one request, and all of them together, may cost the server: one frozen settings object whose
defaults are the `serve` command's (each field is a flag, `--max-batch`, and an `EMBED_SERVE_MAX_BATCH`
variable). Kept free of heavy imports, so building the CLI's parser stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _limit(default: float, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeLimits:
    max_batch: int = _limit(256, "Most inputs per request (413 above).")
    max_input_chars: int = _limit(32_768, "Most characters per input (413 above).")
    max_body_bytes: int = _limit(4 * 2**20, "Largest request body, enforced while it streams in (413 above).")
    batch_wait_ms: float = _limit(
        0.0,
        "How long a request waits for others to be encoded with; 0: only those that queued while the model was "
        "busy (continuous batching).",
    )
    max_batch_texts: int = _limit(128, "Most texts taken from the queue at once.")
    max_batch_tokens: int = _limit(
        8192,
        "Most estimated tokens taken from the queue at once (then sorted by length and cut into model calls of "
        "--call-tokens): a long request is split over several takes and short ones join them.",
    )
    max_queued_texts: int = _limit(
        4096, "Most texts waiting for the model; a request beyond that gets 503 with Retry-After."
    )
    request_timeout_s: float = _limit(30.0, "A request not answered within this many seconds gets 503.")
    model_workers: int = _limit(
        0, "Model calls run at once; 0: one per CPU core, each single-threaded, on the CPU (one on a GPU)."
    )
    call_tokens: int = _limit(
        0,
        "Most padded positions (texts x longest text) per model call, texts sorted by length; 0: the device's "
        "default (256 on the CPU, where small calls stay in cache; 16384 on a GPU).",
    )

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            zero_allowed = setting.name in ("batch_wait_ms", "model_workers", "call_tokens")
            if value < 0 or (value == 0 and not zero_allowed):
                bound = "0 or more" if zero_allowed else "positive"
                raise ValueError(f"--{setting.name.replace('_', '-')} must be {bound}, got {value}")
