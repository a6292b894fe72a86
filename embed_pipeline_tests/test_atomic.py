"""Atomic writes: a reader sees the old file or folder or the complete new one, never a part; failures leave
nothing behind."""

from pathlib import Path

import pytest

from embed_pipeline.core.atomic import staging_dir, write_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_write)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]

    write_atomically(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert target.stat().st_mode & 0o777 == 0o644  # readable by the team, not owner-only like mkstemp's


def test_a_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "models" / "onnx"
    with staging_dir(target) as staging:
        (staging / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), staging_dir(target) as staging:
        (staging / "b.txt").write_text("2")
        raise RuntimeError("export failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with staging_dir(target) as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["onnx"]  # no staging or swapped-out folder left
