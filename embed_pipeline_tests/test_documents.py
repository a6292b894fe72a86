import json
import os
import re
from pathlib import Path

import pytest

from embed_pipeline.core.documents import DocumentError, SkippedFile, load_documents


def make_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with real, extractable Helvetica text (no PDF library needed)."""
    body = " ".join(f"({line}) Tj T*" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td 14 TL {body} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    if title:
        objects.append(f"<< /Title ({title}) >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    info = f" /Info {len(objects)} 0 R" if title else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "notes.txt").write_text("Plain text notes about the product.\nSecond line.")
    (root / "guides" / "setup.md").write_text(
        "```\n# not a heading\n```\n\n# Setup Guide\n\nInstall it with pip. Then run it.\n"
    )
    (root / "page.html").write_text(
        "<html><head><title>The  Page</title><style>p{color:red}</style>"
        "<script>var secret = 1;</script></head><body><nav>Home | About</nav>"
        "<h1>Heading</h1><p>First <b>bold</b> paragraph.</p><p>Second paragraph.</p></body></html>"
    )
    (root / "h1only.htm").write_text("<body><h1>Only H1</h1><p>Body text here.</p></body>")
    (root / "paper.pdf").write_bytes(make_pdf(["Hello PDF world.", "Second PDF line."], "PDF Title"))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n")
    (root / ".hidden.txt").write_text("hidden")
    (root / ".git").mkdir()
    (root / ".git" / "config.txt").write_text("hidden dir")
    return root


def test_folder_loads_every_format(corpus: Path) -> None:
    loaded = load_documents(corpus)
    df = loaded.documents
    assert list(df.columns) == ["doc_id", "title", "text", "source"]
    assert list(df["doc_id"]) == [
        "guides/setup.md",
        "h1only.htm",
        "notes.txt",
        "page.html",
        "paper.pdf",
    ]
    docs = df.set_index("doc_id")
    assert docs.loc["guides/setup.md", "title"] == "Setup Guide"
    assert "Install it with pip." in docs.loc["guides/setup.md", "text"]
    assert docs.loc["notes.txt", "title"] == "notes"
    assert docs.loc["notes.txt", "text"].startswith("Plain text notes")
    html = docs.loc["page.html"]
    assert html["title"] == "The Page"
    assert "First bold paragraph." in html["text"]
    assert "Second paragraph." in html["text"]
    for dropped in ("secret", "color:red", "Home | About"):
        assert dropped not in html["text"]
    assert docs.loc["h1only.htm", "title"] == "Only H1"
    pdf = docs.loc["paper.pdf"]
    assert pdf["title"] == "PDF Title"
    assert "Hello PDF world." in pdf["text"] and "Second PDF line." in pdf["text"]
    assert pdf["source"] == str(corpus / "paper.pdf")
    assert loaded.skipped == [SkippedFile(str(corpus / "logo.png"), "unsupported extension .png")]


def test_single_files_and_pdf_without_title(tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(make_pdf(["Quarterly numbers went up."]))
    df = load_documents(pdf).documents
    assert df.to_dict("records") == [
        {
            "doc_id": "report.pdf",
            "title": "report",
            "text": "Quarterly numbers went up.",
            "source": str(pdf),
        }
    ]
    md = tmp_path / "readme.markdown"
    md.write_text("No heading here, just text.")
    assert load_documents(str(md)).documents.loc[0, "title"] == "readme"


def test_beir_jsonl_keeps_opaque_string_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "a.b/c:1", "title": "T1", "text": "first"},
            {"_id": "007", "text": "second, no title"},
            "",
            {"_id": "1e3", "title": "", "text": "third"},
        ],
    )
    df = load_documents(path).documents
    assert list(df["doc_id"]) == ["a.b/c:1", "007", "1e3"]
    assert all(isinstance(v, str) for v in df["doc_id"])
    assert list(df["title"]) == ["T1", "", ""]
    assert list(df["source"]) == [f"{path}:1", f"{path}:2", f"{path}:4"]


def test_jsonl_inside_folder_is_a_corpus(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "x:1", "text": "from jsonl"}])
    (tmp_path / "a.txt").write_text("from a text file")
    df = load_documents(tmp_path).documents
    assert list(df["doc_id"]) == ["a.txt", "x:1"]


def _bad_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected fragment of the reason)."""
    return {
        "empty.txt": (b"", "empty"),
        "blank.md": (b"  \n\t\n", "empty"),
        "binary.txt": (b"abc\x00def", "NUL"),
        "latin1.txt": ("caf\u00e9 ok".encode("latin-1"), "byte offset 3"),
        "scripts.html": (b"<html><script>x()</script><style>p{}</style></html>", "no text left"),
        "scanned.pdf": (make_pdf([]), "OCR"),
        "broken.pdf": (b"%PDF-1.4\nthis is not really a pdf", "could not be parsed"),
    }


@pytest.mark.parametrize("name", list(_bad_files(Path())))
def test_bad_file_raises_naming_the_file(tmp_path: Path, name: str) -> None:
    content, fragment = _bad_files(tmp_path)[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=fragment) as info:
        load_documents(path)
    assert name in str(info.value)


def test_bad_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    for name, (content, _) in bad.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "good.txt").write_text("Good document.")
    with pytest.raises(DocumentError, match="binary.txt"):  # first in sorted order
        load_documents(tmp_path)
    loaded = load_documents(tmp_path, on_error="skip")
    assert list(loaded.documents["doc_id"]) == ["good.txt"]
    reasons = {Path(s.path).name: s.reason for s in loaded.skipped}
    assert set(reasons) == set(bad)
    for name, (_, fragment) in bad.items():
        assert fragment in reasons[name]


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing-target.txt")
    (tmp_path / "ok.txt").write_text("fine")
    with pytest.raises(DocumentError, match="dangling.txt.*not readable"):
        load_documents(tmp_path)
    loaded = load_documents(tmp_path, on_error="skip")
    assert [Path(s.path).name for s in loaded.skipped] == ["dangling.txt"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"text": "no id"}', "missing field '_id'"),
        ('{"_id": "x"}', "missing field 'text'"),
        ('{"_id": 5, "text": "int id"}', "'_id' must be a string"),
        ('{"_id": "x", "text": "   "}', "'title' and 'text' are both empty"),
        ('{"_id": "x", "title": " ", "text": ""}', "'title' and 'text' are both empty"),
        ('{"_id": "x", "text": "t", "title": 3}', "'title' must be a string"),
    ],
)
def test_jsonl_bad_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "ok", "text": "fine"}, line])
    with pytest.raises(DocumentError, match=fragment) as info:
        load_documents(path)
    assert "corpus.jsonl, line 2" in str(info.value)
    loaded = load_documents(path, on_error="skip")
    assert list(loaded.documents["doc_id"]) == ["ok"]
    assert len(loaded.skipped) == 1 and loaded.skipped[0].path == f"{path}:2"
    assert fragment in loaded.skipped[0].reason


def test_title_only_beir_record_is_a_document_whose_text_is_its_title(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": "t", "title": "Aspirin lowers fever", "text": ""}, {"_id": "u", "title": "Both", "text": "Body."}],
    )
    df = load_documents(path).documents
    assert df.set_index("doc_id")[["title", "text"]].to_dict("index") == {
        "t": {"title": "", "text": "Aspirin lowers fever"},
        "u": {"title": "Both", "text": "Body."},
    }


def test_jsonl_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d", "text": "one"},
            {"_id": "e", "text": "two"},
            {"_id": "d", "text": "three"},
        ],
    )
    with pytest.raises(DocumentError, match=r"corpus.jsonl, line 3: duplicate _id 'd' on lines 1 and 3"):
        load_documents(path)
    loaded = load_documents(path, on_error="skip")
    assert list(loaded.documents["text"]) == ["one", "two"]


def test_duplicate_doc_id_across_sources(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a text file")
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a.txt", "text": "clashes with the file"}])
    with pytest.raises(DocumentError, match=r"corpus.jsonl:1.*duplicate doc_id 'a.txt'.*a.txt"):
        load_documents(tmp_path)


def test_unsupported_single_file_and_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DocumentError, match=r"data.csv: unsupported extension .csv"):
        load_documents(path)
    with pytest.raises(DocumentError, match="nope.*does not exist"):
        load_documents(tmp_path / "nope")


def test_folder_without_usable_documents_raises_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DocumentError, match="no usable documents") as info:
        load_documents(tmp_path, on_error="skip")
    message = str(info.value)
    assert "image.png: unsupported extension .png" in message
    assert "empty.txt: file is empty" in message
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DocumentError, match="no .*files"):
        load_documents(empty, on_error="skip")


def test_walk_is_deterministic_and_utf8_bom_stripped(tmp_path: Path) -> None:
    for name in ["b.txt", "a/z.txt", "a/b/c.txt", "A.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\xef\xbb\xbfcontent of " + name.encode() + b"\r\n")
    df = load_documents(tmp_path).documents
    assert list(df["doc_id"]) == sorted(["b.txt", "a/z.txt", "a/b/c.txt", "A.txt"])
    assert df.loc[0, "text"] == "content of A.txt"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(DocumentError, match="secret.txt.*not readable"):
        load_documents(path)


@pytest.mark.parametrize(
    ("kind", "fragment"), [("loop", "symbolic link loop"), ("dangling", "symbolic link to .*does not exist")]
)
def test_broken_symbolic_links_are_named_bad_files(tmp_path: Path, kind: str, fragment: str) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(link if kind == "loop" else tmp_path / "gone.txt")
    (tmp_path / "ok.txt").write_text("fine")
    with pytest.raises(DocumentError, match=f"link.txt: not readable: a {fragment}.*; fix or remove the link"):
        load_documents(tmp_path)
    loaded = load_documents(tmp_path, on_error="skip")
    assert list(loaded.documents["doc_id"]) == ["ok.txt"]
    assert [s.path for s in loaded.skipped] == [str(link)] and re.search(fragment, loaded.skipped[0].reason)


def test_a_document_over_the_size_limit_is_refused_naming_the_file_limit_and_setting(tmp_path: Path) -> None:
    (tmp_path / "huge.txt").write_text("x" * 101)
    (tmp_path / "fits.txt").write_text("y" * 100)
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "ok", "text": "short"}, {"_id": "big", "text": "z" * 101}])
    with pytest.raises(DocumentError, match=r"corpus.jsonl:2: document text has 101 characters") as info:
        load_documents(tmp_path, max_chars=100)
    assert "limit of 100" in str(info.value) and "raw_documents.max_document_chars" in str(info.value)
    loaded = load_documents(tmp_path, on_error="skip", max_chars=100)
    assert sorted(loaded.documents["doc_id"]) == ["fits.txt", "ok"]
    assert [Path(s.path).name for s in loaded.skipped] == ["corpus.jsonl:2", "huge.txt"]
    assert len(load_documents(tmp_path).documents) == 4  # the default limit is generous


def test_a_pinned_copy_is_named_by_the_users_path(tmp_path: Path) -> None:
    pinned = tmp_path / "artifacts" / "versions" / "c-1" / "documents"
    pinned.mkdir(parents=True)
    (pinned / "good.txt").write_text("fine")
    (pinned / "bad.txt").write_bytes(b"caf\xe9")
    lost = SkippedFile(str(pinned / "lost.txt"), "not readable: a symbolic link loop")
    with pytest.raises(DocumentError, match=r"^/home/me/docs/bad.txt: not valid UTF-8"):
        load_documents(pinned, shown_as="/home/me/docs")
    with pytest.raises(DocumentError, match=r"^/home/me/docs/lost.txt: not readable: a symbolic link loop$"):
        load_documents(pinned, shown_as="/home/me/docs", unreadable=[lost])
    loaded = load_documents(pinned, on_error="skip", shown_as="/home/me/docs", unreadable=[lost])
    assert [s.path for s in loaded.skipped] == ["/home/me/docs/lost.txt", "/home/me/docs/bad.txt"]
