from pathlib import Path

from embed_pipeline.config import config_reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_documents_every_knob_with_its_current_default():
    readme = README.read_text()
    missing = [row for row in config_reference_markdown().splitlines()[2:] if row not in readme]
    assert not missing, (
        "README's configuration table is stale; regenerate it with config_reference_markdown():\n" + "\n".join(missing)
    )
