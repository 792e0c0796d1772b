import json

import pytest
from mft_core.schema import conversation_problems, normalize_record, record_schema, validate_record, validate_records

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def good(**kw):
    rec = {
        "id": "a",
        "task": "t",
        "chat_rounds": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    rec.update(kw)
    return rec


def test_good_record_has_no_problem():
    assert validate_record(good()) == []
    assert conversation_problems(good()) == []


def test_every_problem_is_reported_with_its_location():
    bad = {
        "task": "t",
        "chat_rounds": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": 3}, {"role": "user"}],
    }
    problems = validate_records([good(), bad])
    where = {(p.record_index, p.round_index, p.field) for p in problems}
    assert (1, None, "id") in where  # missing id at record level
    assert (1, 0, "role") in where  # unknown role in round 0
    assert (1, 1, "content") in where  # wrong type in round 1
    assert (1, 2, "content") in where  # missing content in round 2
    assert all(p.record_index == 1 for p in problems)
    assert len(problems) == 4
    assert "record 1, round 0, field 'role'" in str([p for p in problems if p.field == "role"][0])


def test_aliases_are_normalised():
    rec = good(
        chat_rounds=[
            {"role": "human", "content": "q"},
            {"role": "bot", "content": "a"},
            {"role": "Human", "content": "q2"},
            {"role": "gpt", "content": "a2"},
        ]
    )
    norm = normalize_record(rec)
    assert [r["role"] for r in norm["chat_rounds"]] == ["user", "assistant", "user", "assistant"]
    assert validate_record(norm) == []


def test_conversation_shape_problems():
    rec = good(
        chat_rounds=[
            {"role": "assistant", "content": "x"},
            {"role": "assistant", "content": ""},
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
        ]
    )
    kinds = {p.kind for p in conversation_problems(rec)}
    assert {"roles out of order", "empty assistant turn", "misplaced system turn", "no final assistant turn"} <= kinds


def test_raw_text_record_is_allowed():
    assert conversation_problems(good(chat_rounds=[{"role": "assistant", "content": "code"}])) == []


def test_schema_file_is_json_schema():
    schema = record_schema()
    assert schema["required"] == ["id", "task", "chat_rounds"]
    json.dumps(schema)
