"""Loaders: JSONL, CSV, Markdown and plain text files into documents; folders walked; errors name the place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.loaders import LoadError, read_documents


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_records_keep_their_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "kb.jsonl",
        "\n".join(
            [
                json.dumps({"id": "a", "text": "Alpha text", "title": "Alpha", "metadata": {"tags": ["x", "y"]}}),
                "",
                json.dumps({"id": 7, "text": "Seven", "source": "https://example.test/7"}),
            ]
        )
        + "\n",
    )
    docs = read_documents([path]).documents
    assert [(d.id, d.title, d.source, d.metadata) for d in docs] == [
        ("a", "Alpha", "kb.jsonl", {"tags": ["x", "y"]}),
        ("7", None, "https://example.test/7", {}),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "kb.jsonl:2: not JSON"),
        (json.dumps({"id": "b", "text": "t", "body": "?"}), "kb.jsonl:2: unknown field(s) body"),
        (json.dumps({"id": "b", "text": "   "}), "kb.jsonl:2: text: Value error, must not be blank"),
        (json.dumps(["id", "text"]), "kb.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "kb.jsonl", json.dumps({"id": "a", "text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(LoadError) as caught:
        read_documents([path])
    assert expected in str(caught.value)


def test_csv_extra_columns_become_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path / "faq.csv",
        "id,title,text,category,owner\n"
        'q1,Printer,"Jams: open tray 2, then ""pull"".",printers,\n'
        "q2,,Plain answer,vpn,ops\n",
    )
    docs = read_documents([path]).documents
    assert docs[0].text == 'Jams: open tray 2, then "pull".'
    assert (docs[0].title, docs[0].metadata, docs[0].source) == ("Printer", {"category": "printers"}, "faq.csv")
    assert (docs[1].title, docs[1].metadata) == (None, {"category": "vpn", "owner": "ops"})
    bad = write(tmp_path / "bad.csv", "id,body\n1,x\n")
    with pytest.raises(LoadError, match="missing column\\(s\\) text"):
        read_documents([bad])


def test_folders_are_walked_with_relative_ids(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    write(root / "guides" / "vpn.md", "Intro line\n# Connect the VPN\n\nOpen the app.\n")
    write(root / "notes.txt", "Plain note.\n")
    write(root / "empty.txt", "  \n")
    write(root / "image.png", "not really")
    write(root / ".hidden" / "secret.md", "# Hidden\n\nnot read")
    loaded = read_documents([root])
    docs = {d.id: d for d in loaded.documents}
    assert set(docs) == {"guides/vpn", "notes"}
    assert docs["guides/vpn"].title == "Connect the VPN"
    assert docs["guides/vpn"].text == "Intro line\n\nOpen the app."
    assert docs["guides/vpn"].source == "guides/vpn.md"
    assert (docs["notes"].title, docs["notes"].text) == (None, "Plain note.")
    assert loaded.skipped_files == [root / "image.png"]
    assert loaded.blank == [str(root / "empty.txt")]
    single = read_documents([root / "guides" / "vpn.md"]).documents
    assert [d.id for d in single] == ["vpn"]


def test_repeated_ids_and_missing_paths_are_errors(tmp_path: Path) -> None:
    one = write(tmp_path / "a.jsonl", json.dumps({"id": "x", "text": "one"}) + "\n")
    two = write(tmp_path / "b.csv", "id,text\nx,two\n")
    with pytest.raises(LoadError, match="'x' was already read from"):
        read_documents([one, two])
    with pytest.raises(LoadError, match="no such file or folder"):
        read_documents([tmp_path / "nope"])
    with pytest.raises(LoadError, match="unsupported file type"):
        read_documents([write(tmp_path / "x.pdf", "%PDF")])
