import json

import fsspec
import pytest

from embed_pipeline.cli import main
from embed_pipeline.core.device import base_model_path


@pytest.fixture(autouse=True)
def dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()


def _first_error(err: str) -> str:
    return next(line for line in err.splitlines() if "error" in line.lower())


def _docs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nA perfectly fine document about enzymes and their substrates.\n")
    return docs


def test_bad_document_is_bad_input_named_by_the_users_path_before_any_work(tmp_path, capsys):
    docs = _docs(tmp_path)
    (docs / "broken.txt").write_bytes(b"caf\xe9 latin-1 text is not UTF-8")
    code = main(["run", "--docs", str(docs), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert _first_error(err).startswith(f"error: --docs: {docs / 'broken.txt'}: not valid UTF-8")
    assert "Traceback" not in err and "Not executing" not in err
    assert not (tmp_path / "out").exists()  # refused before Dagster started


def test_a_corpus_record_without_id_is_named_by_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "1", "text": "fine"}\n{"text": "no id"}\n')
    assert main(["run", "--docs", str(corpus), "--out", str(tmp_path / "out")]) == 2
    assert _first_error(capsys.readouterr().err).startswith(f"error: --docs: {corpus}, line 2: missing field '_id'")


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_broken_symbolic_link_is_bad_input_naming_it(tmp_path, capsys, kind):
    docs = _docs(tmp_path)
    link = docs / "link.md"
    link.symlink_to(link if kind == "loop" else tmp_path / "gone.md")
    assert main(["run", "--docs", str(docs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert _first_error(err).startswith(f"error: --docs: {link}: not readable: a symbolic link")
    assert "Traceback" not in err


def test_a_document_over_the_configured_size_limit_names_the_file_the_limit_and_the_setting(tmp_path, capsys):
    docs = _docs(tmp_path)
    (docs / "one-line.txt").write_text("word " * 30)
    (tmp_path / "cfg.yaml").write_text("raw_documents: {max_document_chars: 100}\n")
    assert main(["run", "--docs", str(docs), "--config", str(tmp_path / "cfg.yaml")]) == 2
    error = _first_error(capsys.readouterr().err)
    assert error.startswith(f"error: --docs: {docs / 'one-line.txt'}: document text has 149 characters")
    assert "limit of 100" in error and "raw_documents.max_document_chars" in error


def test_a_bad_document_found_inside_the_run_exits_2_naming_the_users_path(tmp_path, capsys):
    """Object-store documents are read inside the run: its DocumentError is still bad input, named by the
    user's path rather than the pinned copy's."""
    fs = fsspec.filesystem("memory")
    fs.pipe({"/cli-docs/good.md": b"# Good\n\nFine text about enzymes.\n", "/cli-docs/broken.txt": b"caf\xe9"})
    try:
        assert main(["run", "--docs", "memory://cli-docs/", "--out", str(tmp_path / "out")]) == 2
    finally:
        fs.rm("/cli-docs", recursive=True)
    err = capsys.readouterr().err
    assert "error in step raw_documents: " in err and "memory://cli-docs/broken.txt: not valid UTF-8" in err
    assert "versions/" not in err


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


def _beir(tmp_path, qrels: list[str]):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [("d1", "Aspirin lowers fever in adults."), ("d2", "Violins have four strings.")]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs))
    queries = [("q1", "what lowers fever"), ("q2", "how many strings does a violin have"), ("q3", "unjudged")]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{r}\n" for r in qrels))
    return folder


def test_eval_reports_judgments_of_unknown_documents_and_unjudged_queries(tmp_path, capsys):
    beir = _beir(tmp_path, ["q1\td1\t1", "q2\tghost\t1"])
    assert main(["eval", "--model", base_model_path(None), "--beir", str(beir), "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    judgments = json.loads(captured.out.strip().splitlines()[-1])["query_sets"]["real_queries"]["judgments"]
    assert judgments["unknown_document_judgments"] == 1 and judgments["unknown_document_examples"] == ["ghost"]
    assert judgments["queries_without_judgments"] == 1 and judgments["unjudged_query_examples"] == ["q3"]
    warning = next(line for line in captured.err.splitlines() if line.startswith("warning:"))
    assert "test.tsv: 1 of 2 judgments name 1 documents that are not in the corpus (e.g. ghost)" in warning
    assert "1 queries of queries.jsonl have no judgment" in warning and "q3" in warning


def test_qrels_that_judge_no_corpus_document_are_bad_input(tmp_path, capsys):
    beir = _beir(tmp_path, ["q1\tx1\t1", "q2\tx2\t1"])
    assert main(["eval", "--model", base_model_path(None), "--beir", str(beir)]) == 2
    error = _first_error(capsys.readouterr().err)
    assert error.startswith(f"error: {beir / 'qrels' / 'test.tsv'}: none of its 2 relevant judgments names a document")
    out = str(tmp_path / "out")
    assert main(["run", "--docs", str(beir / "corpus.jsonl"), "--eval-beir", str(beir), "--out", out]) == 2
    assert _first_error(capsys.readouterr().err).startswith("error: --eval-beir: ")


def test_a_failed_data_check_stops_the_run_naming_its_verdict_not_a_gate(tmp_path, capsys):
    """Too few questions: the blocking data check on synthetic_qa stops the run (exit 1) with its verdict;
    it is not mistaken for the report's gate (exit 3 with a report)."""
    docs = _docs(tmp_path)
    (tmp_path / "cfg.yaml").write_text("synthetic_qa: {min_questions: 50}\n")
    code = main(["run", "--docs", str(docs), "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error in step synthetic_qa: data check enough_usable_questions failed: " in err
    assert "fewer than min_questions=50" in err
