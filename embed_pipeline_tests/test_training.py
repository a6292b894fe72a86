import pytest
import torch

from embed_pipeline.core.sampler import QuestionBatchSampler
from embed_pipeline.core.training import batch_size_rule


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
