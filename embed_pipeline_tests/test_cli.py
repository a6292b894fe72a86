import pytest

from embed_pipeline.cli import main


@pytest.fixture(autouse=True)
def dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()


def test_bad_document_stops_the_run_with_a_message_naming_the_file(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nA perfectly fine document about enzymes and their substrates.\n")
    (docs / "broken.txt").write_bytes(b"caf\xe9 latin-1 text is not UTF-8")
    code = main(["run", "--docs", str(docs), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.txt" in err and "UTF-8" in err
    assert "Traceback" not in err and "Stack Trace" not in err


def test_missing_docs_path_and_bad_eval_folder_are_reported_before_any_work(tmp_path, capsys):
    assert main(["run", "--docs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "doc.md").write_text("some text " * 20)
    assert main(["run", "--docs", str(tmp_path / "doc.md"), "--eval-beir", str(tmp_path)]) == 2
    assert "queries.jsonl" in capsys.readouterr().err
    assert main(["run", "--docs", str(tmp_path / "doc.md"), "--corpus-version", "../v1"]) == 2
    assert "--corpus-version: corpus version '../v1' is not a valid name" in capsys.readouterr().err


def test_bad_query_examples_and_form_mix_are_reported_before_any_work(tmp_path, capsys):
    (tmp_path / "doc.md").write_text("some text " * 20)
    (tmp_path / "seeds.txt").write_text("only one query\n")
    out = str(tmp_path / "out")
    assert (
        main(["run", "--docs", str(tmp_path / "doc.md"), "--query-examples", str(tmp_path / "seeds.txt"), "--out", out])
        == 2
    )
    assert "--query-examples: query examples" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--docs", str(tmp_path / "doc.md"), "--query-forms", "keyword=1"])
    assert exit_info.value.code == 2 and "unknown form(s) ['keyword']" in capsys.readouterr().err


def test_unreadable_config_file_is_named(tmp_path, capsys):
    (tmp_path / "doc.md").write_text("some text " * 20)
    (tmp_path / "cfg.yaml").write_text("synthetic_qa: [not, a, table]\n")
    with pytest.raises(SystemExit, match="cfg.yaml"):
        main(["run", "--docs", str(tmp_path / "doc.md"), "--config", str(tmp_path / "cfg.yaml")])
