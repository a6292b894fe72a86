"""A batch sampler that keeps in-batch negatives honest for unrolled multi-positive training rows.

With MultipleNegativesRankingLoss every other text in a batch is a negative for each anchor. Two rows of
one question (a multi-hop question unrolled into one row per positive) would make its own positives each
other's negatives, and a row whose positive is another row's hard negative would push that passage away
from its own question. This sampler never puts such rows together. It is keyed on question ids and
passage texts given up front, so it costs a set lookup per row, unlike sentence-transformers'
`NoDuplicatesBatchSampler`, which reads and compares every text of every row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler


class QuestionBatchSampler(DefaultBatchSampler):
    """Shuffled batches in which no question appears twice and no row's positive is another row's text.

    `question_ids[i]`, `positives[i]` and `negatives[i]` describe dataset row i. Rows that conflict with
    the batch being filled wait for a later batch (so each epoch still yields every row exactly once).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        question_ids: Sequence[str],
        positives: Sequence[str],
        negatives: Sequence[Sequence[str]],
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if not len(question_ids) == len(positives) == len(negatives) == len(dataset):
            raise ValueError("question_ids, positives and negatives need one entry per dataset row")
        self.question_ids = list(question_ids)
        self.positives = list(positives)
        self.texts = [frozenset([p, *n]) for p, n in zip(positives, negatives, strict=True)]

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        pending = torch.randperm(len(self.question_ids), generator=self.generator).tolist()
        while pending:
            batch: list[int] = []
            questions: set[str] = set()
            batch_positives: set[str] = set()
            batch_texts: set[str] = set()
            waiting: list[int] = []
            for i in pending:
                fits = (
                    len(batch) < self.batch_size
                    and self.question_ids[i] not in questions
                    and self.positives[i] not in batch_texts
                    and not (self.texts[i] & batch_positives)
                )
                if not fits:
                    waiting.append(i)
                    continue
                batch.append(i)
                questions.add(self.question_ids[i])
                batch_positives.add(self.positives[i])
                batch_texts |= self.texts[i]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch
            pending = waiting

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.question_ids) // self.batch_size
        return (len(self.question_ids) + self.batch_size - 1) // self.batch_size
