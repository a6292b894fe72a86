import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.sampler import QuestionBatchSampler
from embed_pipeline.core.settings import TrainingSettings
from embed_pipeline.core.training import ValidationSet, batch_size_rule, finetune, finetune_on_grid


@pytest.mark.parametrize(("n", "batch"), [(10, 16), (128, 16), (200, 25), (512, 64), (1999, 64), (2000, 128)])
def test_batch_size_follows_the_recipe_rule(n, batch):
    assert batch_size_rule(n) == batch


def _rows() -> dict[str, list]:
    """q0 is a 3-hop question unrolled into 3 rows; q1's positive is q2's hard negative; q3..q9 are plain."""
    rows = {"question_id": [], "anchor": [], "positive": [], "negatives": []}

    def add(qid: str, positive: str, negatives: list[str]) -> None:
        rows["question_id"].append(qid)
        rows["anchor"].append(f"question {qid}")
        rows["positive"].append(positive)
        rows["negatives"].append(negatives)

    for hop in range(3):
        add("q0", f"q0 passage {hop}", ["n-a", "n-b"])
    add("q1", "shared passage", ["n-c", "n-d"])
    add("q2", "q2 passage", ["shared passage", "n-e"])
    for i in range(3, 10):
        add(f"q{i}", f"q{i} passage", [f"n-{i}", "n-a"])  # shared negatives are harmless
    return rows


def test_question_sampler_never_batches_a_question_twice_or_a_positive_with_its_use_as_a_negative():
    rows = _rows()
    sampler = QuestionBatchSampler(
        list(range(len(rows["question_id"]))),
        batch_size=4,
        drop_last=False,
        generator=torch.Generator(),
        seed=1,
        question_ids=rows["question_id"],
        positives=rows["positive"],
        negatives=rows["negatives"],
    )
    together_q1_q2 = 0
    for epoch in range(30):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(12))  # every row once per epoch
        for batch in batches:
            qids = [rows["question_id"][i] for i in batch]
            assert len(qids) == len(set(qids)), qids
            together_q1_q2 += {"q1", "q2"} <= set(qids)
    assert together_q1_q2 == 0


TOPICS = ["kidney", "liver", "heart", "lung", "brain", "bone", "skin", "blood", "eye", "ear", "gut", "muscle"]


def _training_rows() -> pd.DataFrame:
    rows = []
    for i, topic in enumerate(TOPICS):
        others = [t for t in TOPICS if t != topic]
        rows.append(
            {
                "question_id": f"q.{i}/v:1",
                "anchor": f"Which enzyme is most active in the {topic}?",
                "positive": f"Enzyme E{i} is the most active enzyme in the {topic} of adult mice.",
                **{f"negative_{k}": f"Enzyme E{i + k} is found in the {others[k]} of rats." for k in range(1, 3)},
            }
        )
    return pd.DataFrame(rows)


def _validation() -> ValidationSet:
    corpus = {f"c{i}": f"Enzyme E{i} is the most active enzyme in the {t} of adult mice." for i, t in enumerate(TOPICS)}
    queries = {f"v{i}": f"What enzyme works hardest in the {t}?" for i, t in enumerate(TOPICS[:4])}
    return ValidationSet(queries=queries, corpus=corpus, relevant={f"v{i}": {f"c{i}"} for i in range(4)})


def test_matryoshka_checkpoint_encodes_at_every_dimension_and_validation_keeps_the_best(tmp_path):
    stats = finetune(
        _training_rows(),
        base_model_path(None),
        tmp_path / "model",
        TrainingSettings(epochs=2, batch_size=4, matryoshka_dims=[384, 128, 32]),
        validation=_validation(),
    )
    assert stats["matryoshka_dims"] == [384, 128, 32] and stats["steps"] == 6
    assert len(stats["validation_curve"]) == 2 and stats["best_checkpoint"] in {"checkpoint-3", "checkpoint-6"}
    assert stats["validation_ndcg@10_base"] is not None
    files = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()}
    card = (tmp_path / "model" / "README.md").read_text()
    assert "| Matryoshka dimensions | [384, 128, 32] |" in card and "| training questions | 12 |" in card
    assert "model.safetensors" in files and not {f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))}
    for dim in (384, 128, 32):
        model = SentenceTransformer(str(tmp_path / "model"), device="cpu", truncate_dim=dim)
        vectors = model.encode(["Which enzyme acts in the liver?"], normalize_embeddings=True)
        assert vectors.shape == (1, dim) and abs(float((vectors**2).sum()) - 1) < 1e-5


def test_bad_matryoshka_dimension_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"matryoshka_dims \[512\]"):
        finetune(_training_rows(), base_model_path(None), tmp_path / "m", TrainingSettings(matryoshka_dims=[512, 128]))


_KILLED_TRAINING = """
import sys
from pathlib import Path
from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.settings import TrainingSettings
from embed_pipeline.core.training import finetune
from embed_pipeline_tests.test_training import _training_rows
finetune(_training_rows(), base_model_path(None), Path(sys.argv[1]),
         TrainingSettings(epochs=4, batch_size=4, checkpoint_steps=1), checkpoint_dir=Path(sys.argv[2]))
"""


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_TRAINING, str(tmp_path / "a"), str(checkpoints)], env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(checkpoints.glob("checkpoint-3/trainer_state.json")):
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint finish writing, then kill mid-run
    child.kill()
    child.wait()
    assert not (tmp_path / "a").exists(), "training finished before it could be killed"
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/trainer_state.json"))
    assert saved and saved[-1] < 12
    (checkpoints / "checkpoint-11").mkdir(exist_ok=True)  # as if killed while writing a later checkpoint

    published = []  # what an object store would receive: each checkpoint, once it is completely written
    stats = finetune(
        _training_rows(),
        base_model_path(None),
        tmp_path / "b",
        TrainingSettings(epochs=4, batch_size=4, checkpoint_steps=1),
        checkpoint_dir=checkpoints,
        on_checkpoint=lambda folder: published.append((folder.name, (folder / "trainer_state.json").is_file())),
    )
    assert stats["resumed_from_step"] == saved[-1] >= 3 and stats["steps"] == 12
    assert published == [(f"checkpoint-{step}", True) for step in range(saved[-1] + 1, 13)]
    assert not checkpoints.exists()  # done: nothing left to resume


def test_prompts_reach_training_and_are_saved_with_the_model(tmp_path):
    stats = finetune(
        _training_rows().head(8),
        base_model_path(None),
        tmp_path / "model",
        TrainingSettings(epochs=1, batch_size=4),
        query_prompt="query: ",
        passage_prompt="passage: ",
    )
    saved = SentenceTransformer(stats["path"], device="cpu")
    assert saved.prompts["query"] == "query: " and saved.prompts["document"] == "passage: "
    text = "Which enzyme acts in the liver?"
    assert not np.allclose(saved.encode_query([text]), saved.encode([text]))  # the prompt is applied


def test_schedule_grid_keeps_the_setting_that_validates_better(tmp_path):
    # A learning rate of 0.05 wrecks MiniLM within a few steps; the validation questions must notice.
    stats = finetune_on_grid(
        _training_rows(),
        base_model_path(None),
        tmp_path / "model",
        # Without mixing with the base weights, which would restore the wrecked point to the base's score.
        TrainingSettings(
            grid=[{"learning_rate": 0.05}, {"learning_rate": 1e-5}], epochs=1, batch_size=4, mixing_weights=[1.0]
        ),
        validation=_validation(),
    )
    wrecked, gentle = stats["grid"]
    assert wrecked["validation_ndcg@10"] < gentle["validation_ndcg@10"]
    assert gentle["kept"] and not wrecked["kept"] and stats["learning_rate"] == 1e-5
    assert (tmp_path / "model" / "model.safetensors").is_file() and not list(tmp_path.glob("model.grid-*"))
    assert json.loads((tmp_path / "model" / "fusion.json").read_text())["validation_questions"] == 4
    with pytest.raises(ValueError, match=r"grid keys \['batch_size'\]"):
        finetune_on_grid(
            _training_rows(),
            base_model_path(None),
            tmp_path / "m2",
            TrainingSettings(grid=[{"batch_size": 8}]),
            validation=_validation(),
        )
