"""The csv and jsonl suites: good files, and every malformed input refused with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.errors import InputError, UsageError
from evalkit.suites.base import MAX_PROMPT_CHARS
from evalkit.suites.prompt_files import make_csv_suite, make_jsonl_suite


def _csv(tmp_path: Path, text: str, name: str = "mine.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, lines: list[str], name: str = "mine.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _csv_error(tmp_path: Path, text: str) -> str:
    path = _csv(tmp_path, text)
    with pytest.raises(InputError) as info:
        make_csv_suite({"path": str(path)})
    assert str(path) in str(info.value)
    return str(info.value)


def _jsonl_error(tmp_path: Path, lines: list[str]) -> str:
    path = _jsonl(tmp_path, lines)
    with pytest.raises(InputError) as info:
        make_jsonl_suite({"path": str(path)})
    assert str(path) in str(info.value)
    return str(info.value)


def test_good_csv_gives_items_with_given_and_default_ids(tmp_path):
    path = _csv(
        tmp_path,
        'prompt,id,category\n"a red cube, on a table",cube-1,colors\na dog,,animals\na cat,cat.2,\n',
    )
    suite = make_csv_suite({"path": str(path)})
    items = suite.items()
    assert [(i.id, i.prompt, i.category) for i in items] == [
        ("cube-1", "a red cube, on a table", "colors"),
        ("mine-00001", "a dog", "animals"),
        ("cat.2", "a cat", None),
    ]
    assert suite.categories() == ["animals", "colors"]
    d = suite.describe()
    assert d["name"] == "csv" and d["num_prompts"] == 3 and len(d["file_sha256"]) == 64


@pytest.mark.parametrize("column", ["Prompts", "text", "caption", "PROMPT"])
def test_csv_accepts_prompt_column_aliases(tmp_path, column):
    path = _csv(tmp_path, f"{column},Category\na horse,animals\n")
    items = make_csv_suite({"path": str(path)}).items()
    assert (
        items[0].prompt == "a horse"
        and items[0].category == "animals"
        and items[0].id == "mine-00000"
    )


def test_csv_with_bom_crlf_and_blank_lines_is_read(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes("\ufeffprompt\r\na fox\r\n\r\nan owl\r\n".encode())
    assert [i.prompt for i in make_csv_suite({"path": str(path)}).items()] == ["a fox", "an owl"]


def test_good_jsonl_gives_items(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            '{"prompt": "a fox", "id": "fox", "category": "animals"}',
            "",
            '{"text": "an owl", "id": 7}',
            '{"caption": "a bee"}',
        ],
    )
    suite = make_jsonl_suite({"path": str(path)})
    assert [(i.id, i.prompt, i.category) for i in suite.items()] == [
        ("fox", "a fox", "animals"),
        ("7", "an owl", None),
        ("mine-00002", "a bee", None),
    ]
    assert suite.describe()["name"] == "jsonl"


def test_ragged_csv_row_is_refused_with_its_line(tmp_path):
    assert "line 3: 3 fields, but the header has 2" in _csv_error(
        tmp_path, "prompt,id\na,1\nb,2,extra\n"
    )


def test_csv_without_a_header_is_refused(tmp_path):
    assert "no header" in _csv_error(tmp_path, "a red cube,cube\na dog,dog\n")


def test_non_utf8_csv_is_refused_with_its_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("prompt\na caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv: line 2: not UTF-8"):
        make_csv_suite({"path": str(path)})


def test_malformed_csv_quoting_is_refused(tmp_path):
    assert "malformed CSV" in _csv_error(tmp_path, 'prompt\n"a "quoted" mess\n')


def test_empty_csv_is_refused(tmp_path):
    assert "empty file" in _csv_error(tmp_path, "")


def test_csv_with_header_only_has_no_prompts(tmp_path):
    assert "no prompts" in _csv_error(tmp_path, "prompt,id\n")


def test_empty_prompt_is_refused_with_its_line(tmp_path):
    assert "line 3: prompt is empty" in _csv_error(tmp_path, "prompt,id\na,1\n  ,2\n")


def test_overlong_prompt_is_refused(tmp_path):
    assert "characters long" in _csv_error(
        tmp_path, "prompt\n" + "x" * (MAX_PROMPT_CHARS + 1) + "\n"
    )


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path):
    message = _csv_error(tmp_path, "prompt,id\na,same\nb,other\nc,same\n")
    assert "line 4: id 'same' already used on line 2" in message


def test_given_id_colliding_with_a_default_id_is_refused(tmp_path):
    assert "already used" in _csv_error(tmp_path, "prompt,id\na,\nb,mine-00000\n")


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "has space", ".hidden", "é", "x" * 129])
def test_unsafe_ids_are_refused_with_the_row(tmp_path, bad_id):
    message = _csv_error(tmp_path, f"prompt,id\nok,fine\na,{bad_id}\n")
    assert "line 3" in message and "not file-name safe" in message


def test_several_prompt_columns_are_ambiguous(tmp_path):
    assert "several prompt columns" in _csv_error(tmp_path, "prompt,text\na,b\n")


def test_bad_json_line_is_refused_with_its_line(tmp_path):
    assert "line 2: invalid JSON" in _jsonl_error(tmp_path, ['{"prompt": "a"}', '{"prompt": "b",}'])


def test_jsonl_line_that_is_not_an_object_is_refused(tmp_path):
    assert "line 2: expected a JSON object" in _jsonl_error(tmp_path, ['{"prompt": "a"}', '["b"]'])


def test_jsonl_line_without_a_prompt_key_is_refused(tmp_path):
    assert "line 1: no prompt key" in _jsonl_error(tmp_path, ['{"prmpt": "a"}'])


def test_jsonl_prompt_that_is_not_text_is_refused(tmp_path):
    assert "line 1: prompt must be text" in _jsonl_error(tmp_path, ['{"prompt": 5}'])


def test_jsonl_category_that_is_not_text_is_refused(tmp_path):
    assert "category must be text" in _jsonl_error(tmp_path, ['{"prompt": "a", "category": ["x"]}'])


def test_jsonl_boolean_id_is_refused(tmp_path):
    assert "id must be text or an integer" in _jsonl_error(
        tmp_path, ['{"prompt": "a", "id": true}']
    )


def test_non_utf8_jsonl_is_refused(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        json.dumps({"prompt": "x"}).encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1")
    )
    with pytest.raises(InputError, match=r"line 2: not UTF-8"):
        make_jsonl_suite({"path": str(path)})


def test_missing_file_and_missing_path_option(tmp_path):
    with pytest.raises(InputError, match="not found"):
        make_jsonl_suite({"path": str(tmp_path / "absent.jsonl")})
    with pytest.raises(UsageError, match="path=FILE"):
        make_csv_suite({})
    with pytest.raises(UsageError, match="unknown option"):
        make_csv_suite({"path": "x.csv", "delimiter": ";"})


def test_unsafe_file_stem_still_gives_safe_default_ids(tmp_path):
    path = _csv(tmp_path, "prompt\na\n", name="my prompts (v2).csv")
    assert make_csv_suite({"path": str(path)}).items()[0].id == "my_prompts__v2_-00000"
