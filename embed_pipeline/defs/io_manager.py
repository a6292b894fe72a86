"""Artifacts as plain files a user can open: tables as Parquet, everything else as JSON."""

import json
import os
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.defs.resources import VERSIONS_DIR


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; artifacts are meant to be shared and read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ArtifactIOManager(dg.ConfigurableIOManager):
    base_dir: str

    def _path(self, context: dg.InputContext | dg.OutputContext, suffix: str) -> Path:
        """``BASE/versions/VERSION/ASSET.suffix`` for a corpus version's asset, ``BASE/ASSET.suffix`` otherwise."""
        if context.has_asset_partitions:
            key = context.asset_partition_key
            return Path(self.base_dir, VERSIONS_DIR, key, *context.asset_key.path).with_suffix(suffix)
        return Path(self.base_dir, *context.asset_key.path).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | dict) -> None:
        if isinstance(obj, pd.DataFrame):
            path = self._path(context, ".parquet")
            write_atomically(path, lambda tmp: obj.to_parquet(tmp, index=False))
        elif isinstance(obj, dict):
            path = self._path(context, ".json")
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False)))
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: cannot store {type(obj).__name__}")
        context.add_output_metadata({"artifact": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict:
        parquet = self._path(context, ".parquet")
        if parquet.exists():
            return pd.read_parquet(parquet)
        path = self._path(context, ".json")
        if not path.exists():
            raise FileNotFoundError(
                f"Upstream asset {context.asset_key.to_user_string()} has no artifact under {self.base_dir}: "
                "materialize it first."
            )
        return json.loads(path.read_text())
