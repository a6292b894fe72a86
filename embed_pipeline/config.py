"""The pipeline's settings as Dagster config: one class per asset, each a mirror of a frozen settings class of
the core (`embed_pipeline.core.settings`, where every default and description is written once), so the
launchpad, `embed-pipeline run --config` and the stage functions share them; the README documents every field.
"""

from pathlib import Path

import dagster as dg

from embed_pipeline.core.settings import (
    ChunkingSettings,
    DocumentsSettings,
    EvaluationSettings,
    ExportSettings,
    GenerationSettings,
    Int8ExportSettings,
    MiningSettings,
    SplitSettings,
    StageSettings,
    TeacherScoresSettings,
    TeacherSettings,
    TensorRTSettings,
    TrainingSettings,
)


class SettingsMirror:
    """A Dagster config class that mirrors a core settings class (its fields, defaults, descriptions and
    validators, inherited); `settings()` is the one conversion back."""

    def settings(self) -> StageSettings:
        mirrored = next(c for c in type(self).__mro__ if issubclass(c, StageSettings) and not issubclass(c, dg.Config))
        return mirrored(**self.model_dump())


class DocumentsConfig(dg.Config, DocumentsSettings, SettingsMirror):
    """`DocumentsSettings` in the launchpad and run config."""


class ChunkingConfig(dg.Config, ChunkingSettings, SettingsMirror):
    """`ChunkingSettings` in the launchpad and run config."""


class SyntheticQAConfig(dg.Config, GenerationSettings, SettingsMirror):
    """`GenerationSettings` in the launchpad and run config."""


class SplitConfig(dg.Config, SplitSettings, SettingsMirror):
    """`SplitSettings` in the launchpad and run config."""


class MiningConfig(dg.Config, MiningSettings, SettingsMirror):
    """`MiningSettings` in the launchpad and run config."""


class TeacherConfig(dg.Config, TeacherSettings, SettingsMirror):
    """`TeacherSettings` in the launchpad and run config."""


class TeacherScoresConfig(dg.Config, TeacherScoresSettings, SettingsMirror):
    """`TeacherScoresSettings` in the launchpad and run config."""


class TrainingConfig(dg.Config, TrainingSettings, SettingsMirror):
    """`TrainingSettings` in the launchpad and run config."""


class EvaluationConfig(dg.Config, EvaluationSettings, SettingsMirror):
    """`EvaluationSettings` in the launchpad and run config."""


class ExportConfig(dg.Config, ExportSettings, SettingsMirror):
    """`ExportSettings` in the launchpad and run config."""


class Int8ExportConfig(dg.Config, Int8ExportSettings, SettingsMirror):
    """`Int8ExportSettings` in the launchpad and run config."""


class TensorRTConfig(dg.Config, TensorRTSettings, SettingsMirror):
    """`TensorRTSettings` in the launchpad and run config."""


ASSET_CONFIGS: dict[str, type[dg.Config]] = {
    "raw_documents": DocumentsConfig,
    "chunked_corpus": ChunkingConfig,
    "synthetic_qa": SyntheticQAConfig,
    "qa_splits": SplitConfig,
    "hard_negatives": MiningConfig,
    "teacher": TeacherConfig,
    "teacher_scores": TeacherScoresConfig,
    "training_set, finetuned_model": TrainingConfig,
    "beir_report": EvaluationConfig,
    "onnx_model": ExportConfig,
    "onnx_int8_model": Int8ExportConfig,
    "tensorrt_engine": TensorRTConfig,
}


def config_reference_markdown() -> str:
    """The README's table of every knob, generated from the classes above so the two cannot drift."""
    lines = ["| asset | field | default | what |", "|---|---|---|---|"]
    for asset, cls in ASSET_CONFIGS.items():
        for name, field in cls.model_fields.items():
            lines.append(f"| `{asset}` | `{name}` | `{field.default}` | {field.description} |")
    return "\n".join(lines)


def load_asset_settings(path: str | Path) -> dict[str, dict]:
    """Per-asset settings from a YAML file, ``{asset: {field: value}}``; ValueError naming the file."""
    import yaml

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
        raise ValueError(f"{path} must map asset names to {{field: value}} tables")
    return {asset: dict(values) for asset, values in loaded.items()}


def asset_run_config(settings: dict[str, dict]) -> dict:
    """Dagster run config for per-asset settings. training_set and finetuned_model share TrainingConfig, so
    finetuned_model's settings apply to training_set too (its own override them)."""
    settings = dict(settings)
    if "finetuned_model" in settings:
        settings["training_set"] = {**settings["finetuned_model"], **settings.get("training_set", {})}
    return {"ops": {asset: {"config": values} for asset, values in settings.items()}}
