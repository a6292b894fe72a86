import pytest

from embed_pipeline.core.training import batch_size_rule


@pytest.mark.parametrize(("n", "batch"), [(10, 16), (128, 16), (200, 25), (512, 64), (1999, 64), (2000, 128)])
def test_batch_size_follows_the_recipe_rule(n, batch):
    assert batch_size_rule(n) == batch
