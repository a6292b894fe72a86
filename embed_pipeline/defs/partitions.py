"""Corpus versions: every asset is partitioned by the version of the document set it was built from.

A version is added by the documents sensor (key: the set's content hash, `core.versions`), by
`embed-pipeline run` (the same key, or `--corpus-version NAME`), or by hand in the UI; its documents are
pinned in `artifacts/versions/VERSION/documents/` on first use, so it can be rebuilt later.
"""

import warnings

import dagster as dg

corpus_versions = dg.DynamicPartitionsDefinition(name="corpus_versions")

# Asset checks are partitioned by the same versions, so each verdict belongs to its version; Dagster marks
# partitioned checks as a preview and warns once per check at import, which only clutters the CLI's output.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)
