"""The offline generator's runtimes: llama.cpp when installed (optional extra), else transformers."""

import pytest

from embed_pipeline.core import local_llm
from embed_pipeline.core.llm import LLMConfigError, LLMSettings
from embed_pipeline.core.sdg import generate_questions
from embed_pipeline_tests.test_sdg import _chunks


def test_auto_takes_llama_cpp_only_when_it_is_installed(monkeypatch):
    monkeypatch.setattr(local_llm, "llama_cpp_available", lambda: False)
    assert local_llm.resolve_runtime("auto") == "transformers"
    with pytest.raises(LLMConfigError, match="pip install llama-cpp-python"):
        local_llm.resolve_runtime("llama_cpp")
    monkeypatch.setattr(local_llm, "llama_cpp_available", lambda: True)
    assert local_llm.resolve_runtime("auto") == "llama_cpp"
    assert local_llm.resolve_runtime("transformers") == "transformers"


def test_asking_for_a_missing_llama_cpp_fails_before_any_work_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(local_llm, "llama_cpp_available", lambda: False)
    with pytest.raises(LLMConfigError, match="pip install llama-cpp-python"):
        generate_questions(_chunks(2), LLMSettings(local_runtime="llama_cpp"), tmp_path / "cache.jsonl")
    assert not (tmp_path / "cache.jsonl").exists() or not (tmp_path / "cache.jsonl").read_text()


@pytest.mark.skipif(
    not local_llm.llama_cpp_available(),
    reason="llama-cpp-python is not installed (optional: pip install -e '.[llamacpp]', compiles ~10-20 min)",
)
def test_llama_cpp_runtime_writes_questions_through_the_same_code_path(tmp_path):
    settings = LLMSettings(local_runtime="llama_cpp")
    result = generate_questions(_chunks(3), settings, tmp_path / "cache.jsonl", questions_per_chunk=2)
    engine = local_llm._PROVIDER_INSTANCE.engine(settings.model)
    assert isinstance(engine, local_llm._LlamaCppEngine)
    assert result.stats["llm_failures"] == 0 and result.stats["completion_tokens"] > 0
    assert len(result.questions) + len(result.rejected) == 6
    # the second sample of a chunk re-evaluates (almost) none of its prompt: llama.cpp kept its cache
    assert result.stats["cached_prompt_tokens"] > result.stats["prompt_tokens"] / 3
