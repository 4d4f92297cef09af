"""JSON-lines manifests: fields, relative paths, and errors naming the bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haic_kernels.video.manifest import (
    ManifestError,
    ManifestRecord,
    read_manifest,
    write_manifest,
)


def test_fields_and_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "set"
    sub.mkdir()
    m = sub / "m.jsonl"
    m.write_text(
        "# a comment\n"
        + json.dumps({"path": "clips/a.mp4", "id": "a", "question": "What?", "lang": "en"})
        + "\n\n"
        + json.dumps({"path": "/abs/b.webm", "id": 7, "caption": "c", "answer": "x"})
        + "\n"
    )
    recs = read_manifest(m)
    assert [r.line for r in recs] == [2, 4]
    assert recs[0].path == str(sub / "clips" / "a.mp4")  # against the manifest's folder
    assert (recs[0].id, recs[0].question, recs[0].extra) == ("a", "What?", {"lang": "en"})
    assert recs[1].path == "/abs/b.webm" and recs[1].id == "7"
    assert (recs[1].caption, recs[1].answer, recs[1].question) == ("c", "x", None)
    assert recs[0].to_dict() == {
        "path": recs[0].path, "id": "a", "question": "What?", "lang": "en"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"path": "a.mp4"}', "{not json"], r"m\.jsonl line 2: not valid JSON"),
        (['{"path": "a.mp4"}', "{}", '{"path": "b"}'], r"line 2: 'path' must be a non-empty"),
        (['{"path": ""}'], r"line 1: 'path' must be a non-empty"),
        (['["a.mp4"]'], r"line 1: expected a JSON object, got list"),
        (['{"path": "a.mp4", "question": 3}'], r"line 1: 'question' must be a string"),
        (["", "# only comments"], r"lists no videos"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, lines: list[str], match: str) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=match):
        read_manifest(m)


def test_missing_manifest_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "nope.jsonl")
    assert issubclass(ManifestError, ValueError)
    m = write_manifest(tmp_path / "w.jsonl", [{"path": "x.mp4", "question": "é?"}])
    (rec,) = read_manifest(m)
    assert rec == ManifestRecord(path=str(tmp_path / "x.mp4"), question="é?", line=1)
    with pytest.raises(ValueError, match=r"records\[0\]"):
        write_manifest(tmp_path / "bad.jsonl", [{"question": "no path"}])
