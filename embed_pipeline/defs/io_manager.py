"""Artifacts as plain files a user can open: tables as Parquet, everything else as JSON."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.core.atomic import write_atomically
from embed_pipeline.core.storage import ArtifactStore
from embed_pipeline.defs.resources import VERSIONS_DIR


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Asset values under ``BASE/versions/VERSION/ASSET.parquet|json``; BASE is a folder or an object-store URL
    (then written in the local ``workdir`` first and uploaded)."""

    base_dir: str
    workdir: str | None = None

    def _store(self) -> ArtifactStore:
        return ArtifactStore(self.base_dir, self.workdir)

    def _local(self, context: dg.InputContext | dg.OutputContext, suffix: str) -> Path:
        """The working-copy path: ``versions/VERSION/ASSET.suffix`` for a corpus version's asset, else ``ASSET``."""
        parts = list(context.asset_key.path)
        if context.has_asset_partitions:
            parts = [VERSIONS_DIR, context.asset_partition_key, *parts]
        parts[-1] += suffix
        return self._store().local(*parts)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | dict) -> None:
        if isinstance(obj, pd.DataFrame):
            path = self._local(context, ".parquet")
            write_atomically(path, lambda tmp: obj.to_parquet(tmp, index=False))
        elif isinstance(obj, dict):
            path = self._local(context, ".json")
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False)))
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: cannot store {type(obj).__name__}")
        address = self._store().push(path)
        context.add_output_metadata({"artifact": dg.MetadataValue.path(address)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict:
        store = self._store()
        for suffix in (".parquet", ".json"):
            path = self._local(context, suffix)
            if store.exists(path):
                # Re-read from the store: a re-materialization elsewhere may have replaced the value.
                path = store.pull(store.address(path), refresh=True)
                return pd.read_parquet(path) if suffix == ".parquet" else json.loads(path.read_text())
        raise FileNotFoundError(
            f"Upstream asset {context.asset_key.to_user_string()} has no artifact under {self.base_dir}: "
            "materialize it first."
        )
