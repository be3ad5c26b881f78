from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from workbench.data.dataset import (
    DataError,
    auto_epochs,
    check_bad_rows,
    load_data,
    render,
    split_rows,
    to_trl,
)
from workbench.data.files import DataFileError
from workbench.data.formats import NORMALISERS, detect_format

MESSAGES = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
EXAMPLES = {
    "messages": MESSAGES,
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    "alpaca": {"instruction": "Hi?", "input": "", "output": "Hello."},
    "qa": {"question": "Hi?", "answer": "Hello."},
    "prompt_completion": {"prompt": "Hi?", "completion": "Hello."},
}


def write(path: Path, rows: list) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", sorted(EXAMPLES))
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_every_sft_format_normalises_to_the_same_conversation(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = write(tmp_path / f"data{suffix}", [EXAMPLES[fmt]] * 3)
    data = load_data(path)
    assert data.format == fmt
    assert not data.bad
    assert [row for _, row in data.rows] == [MESSAGES] * 3


@pytest.mark.parametrize("fmt", ["alpaca", "qa", "prompt_completion"])
def test_flat_formats_read_from_csv(tmp_path: Path, fmt: str) -> None:
    data = load_data(write(tmp_path / "data.csv", [EXAMPLES[fmt]] * 2))
    assert data.format == fmt and [row for _, row in data.rows] == [MESSAGES] * 2


def test_alpaca_input_is_appended_to_the_instruction(tmp_path: Path) -> None:
    row = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    data = load_data(write(tmp_path / "a.jsonl", [row]))
    assert data.rows[0][1]["messages"][0]["content"] == "Translate.\n\nchat"


def test_preference_rows(tmp_path: Path) -> None:
    row = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    data = load_data(write(tmp_path / "p.jsonl", [row]))
    assert data.format == "preference"
    assert data.rows[0][1]["chosen"] == [{"role": "assistant", "content": "Hello."}]
    assert to_trl(data.rows[0][1], "responses")["rejected"][0]["content"] == "Go away."


def test_system_prompt_is_added_only_where_missing(tmp_path: Path) -> None:
    own = {"messages": [{"role": "system", "content": "Own."}, *MESSAGES["messages"]]}
    data = load_data(write(tmp_path / "s.jsonl", [MESSAGES, own]), system_prompt="Be brief.")
    assert data.rows[0][1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert data.rows[1][1]["messages"][0] == {"role": "system", "content": "Own."}


def test_declared_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"question": "Q", "answer": "A", "text": "T"}])
    assert load_data(path, "text").rows[0][1] == {"text": "T"}


BAD_ROWS = [
    ("not an object", [1, 2], "expected an object"),
    ("missing field", {"question": "Q?"}, "missing field 'answer'"),
    ("empty field", {"question": "Q?", "answer": "  "}, "field 'answer' is empty"),
    ("wrong type", {"question": "Q?", "answer": 42}, "must be text, got int"),
    ("null field", {"question": None, "answer": "A"}, "missing field 'question'"),
]


@pytest.mark.parametrize("kind,row,reason", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_each_bad_row_kind_is_reported_with_its_line(tmp_path: Path, kind: str, row: object, reason: str) -> None:
    good = {"question": "Q?", "answer": "A"}
    data = load_data(write(tmp_path / "b.jsonl", [good, row, good]), "qa")
    assert len(data.rows) == 2
    assert [(b.number, b.label) for b in data.bad] == [(2, "line 2")]
    assert reason in data.bad[0].reason


BAD_CONVERSATIONS = [
    (
        "unknown role",
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "'wizard'",
    ),
    (
        "ends with user",
        {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
        "must end with an assistant turn",
    ),
    (
        "no user turn",
        {"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "no user turn",
    ),
    ("empty turns", {"messages": []}, "has no turns"),
    ("turns not a list", {"messages": "hello"}, "must be a list of turns"),
    (
        "content not text",
        {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]},
        "must be text",
    ),
]


@pytest.mark.parametrize("kind,row,reason", BAD_CONVERSATIONS, ids=[b[0] for b in BAD_CONVERSATIONS])
def test_bad_conversations(tmp_path: Path, kind: str, row: dict, reason: str) -> None:
    data = load_data(write(tmp_path / "c.jsonl", [MESSAGES, row]), "messages")
    assert len(data.rows) == 1 and data.bad[0].number == 2
    assert reason in data.bad[0].reason


def test_unknown_sharegpt_speaker(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]}
    data = load_data(write(tmp_path / "g.jsonl", [EXAMPLES["sharegpt"], row]))
    assert "'narrator'" in data.bad[0].reason


def test_broken_jsonl_lines_are_kept_as_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "Q", "answer": "A"}\n{"question": \n\n{"question": "Q", "answer": "A"}\n\n')
    data = load_data(path)
    assert [(b.number, b.reason.split(" (")[0]) for b in data.bad] == [(2, "not valid JSON"), (3, "blank line")]
    assert [n for n, _ in data.rows] == [1, 4]


def test_csv_row_with_extra_cells(tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text("question,answer\nQ,A\nQ,A,surplus\n")
    data = load_data(path)
    assert data.bad[0].label == "row 2" and "more cells" in data.bad[0].reason


def test_bad_rows_over_tolerance_are_all_named(tmp_path: Path) -> None:
    rows = [{"question": "Q", "answer": "A"}] + [{"question": "Q"}] * 3
    data = load_data(write(tmp_path / "t.jsonl", rows))
    with pytest.raises(DataError) as err:
        check_bad_rows(data, tolerated=2)
    message = str(err.value)
    assert "3 of 4 lines are bad" in message and "t.jsonl" in message
    assert all(f"line {n}: missing field 'answer'" in message for n in (2, 3, 4))
    check_bad_rows(data, tolerated=3)  # within tolerance: no error, and still listed on data.bad
    assert len(data.bad) == 3


def test_undetectable_format_names_the_expected_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot tell the data format from the columns \['body', 'title'\]"):
        load_data(write(tmp_path / "x.json", [{"title": "t", "body": "b"}]))


def test_unreadable_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"a": 1},')
    with pytest.raises(DataFileError, match="bad.json: not valid JSON at line 1"):
        load_data(bad_json)
    with pytest.raises(DataFileError, match="unknown file type '.txt'"):
        load_data(tmp_path / "data.txt")


def test_split_is_deterministic_and_disjoint() -> None:
    rows = [(i + 1, {"text": str(i)}) for i in range(100)]
    train, held = split_rows(rows, 0.1, seed=3)
    again_train, again_held = split_rows(rows, 0.1, seed=3)
    assert held == again_held and train == again_train
    assert len(held) == 10 and len(train) == 90
    assert not {n for n, _ in train} & {n for n, _ in held}
    assert split_rows(rows, 0.1, seed=4)[1] != held
    assert len(split_rows(rows, 7, seed=0)[1]) == 7
    with pytest.raises(DataError, match="none left to train on"):
        split_rows(rows, 100, seed=0)


def test_auto_epochs_follows_the_rule_of_thumb() -> None:
    assert auto_epochs(50) == 15 and auto_epochs(100) == 15
    assert auto_epochs(1000) == 10
    assert auto_epochs(10000) == 2 and auto_epochs(1_000_000) == 2
    assert 10 < auto_epochs(300) < 15 and 2 < auto_epochs(3000) < 10


def test_loss_on_switches_between_masked_prompt_and_full_text() -> None:
    masked = to_trl(MESSAGES, "responses")
    assert masked["prompt"] == MESSAGES["messages"][:1] and masked["completion"] == MESSAGES["messages"][1:]
    assert to_trl(MESSAGES, "all") == MESSAGES


def test_spreadsheet_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; the first column must still be called `question`."""
    path = tmp_path / "qa.csv"
    path.write_bytes("question,answer\r\n一加一是多少？,二\r\n二加二是多少？,四\r\n".encode("utf-8-sig"))
    data = load_data(path)
    assert data.format == "qa" and not data.bad
    assert data.rows[0][1]["messages"][0]["content"] == "一加一是多少？"


def test_other_encodings_get_a_clear_error_and_can_be_named(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes("question,answer\n一加一是多少？,二\n".encode("gbk"))
    expected = r"qa\.csv: not readable as utf-8 \(byte 0x\w\w on line 2\).*data\.encoding"
    with pytest.raises(DataFileError, match=expected):
        load_data(path)
    data = load_data(path, encoding="gbk")
    assert data.rows[0][1]["messages"][-1]["content"] == "二"
    with pytest.raises(DataFileError, match="data.encoding 'klingon' is not an encoding Python knows"):
        load_data(path, encoding="klingon")


def test_a_jsonl_file_with_a_bom_keeps_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_bytes(("\ufeff" + json.dumps(MESSAGES) + "\n" + json.dumps(MESSAGES) + "\n").encode())
    data = load_data(path)
    assert len(data.rows) == 2 and not data.bad


def test_too_few_rows_for_the_split_says_how_many_are_needed(tmp_path: Path) -> None:
    rows = [(n, MESSAGES) for n in range(1, 4)]
    with pytest.raises(DataError, match="held_out is 60: 60 of the 3 usable rows .* use at least 61 rows"):
        split_rows(rows, 60, 0)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


HH_PROMPT = "\n\nHuman: What is 2+2?\n\nAssistant: Four?\n\nHuman: Sure?\n\nAssistant:"
HH_TURNS = [user("What is 2+2?"), bot("Four?"), user("Sure?")]
PREFERENCE_ROWS = {
    "text": (
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {"prompt": [user("Hi?")], "chosen": [bot("Hello.")], "rejected": [bot("Go away.")]},
    ),
    "turn lists": (
        {"prompt": [user("Hi?")], "chosen": [bot("Hello.")], "rejected": [bot("Go away.")]},
        {"prompt": [user("Hi?")], "chosen": [bot("Hello.")], "rejected": [bot("Go away.")]},
    ),
    "rm-static one turn": (
        {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4.", "rejected": " 5."},
        {"prompt": [user("What is 2+2?")], "chosen": [bot("4.")], "rejected": [bot("5.")]},
    ),
    "rm-static several turns": (
        {"prompt": HH_PROMPT, "chosen": " Yes, 4.", "rejected": " No."},
        {"prompt": HH_TURNS, "chosen": [bot("Yes, 4.")], "rejected": [bot("No.")]},
    ),
    "text mentioning Human: stays one turn": (
        {"prompt": "Who said 'Human: hi'?", "chosen": " Me.", "rejected": "You."},
        {"prompt": [user("Who said 'Human: hi'?")], "chosen": [bot(" Me.")], "rejected": [bot("You.")]},
    ),
    "hh-rlhf": (
        {"chosen": HH_PROMPT + " Yes, 4.", "rejected": HH_PROMPT + " No."},
        {"prompt": HH_TURNS, "chosen": [bot("Yes, 4.")], "rejected": [bot("No.")]},
    ),
    "implicit prompt turn lists": (
        {"chosen": [*HH_TURNS, bot("Yes, 4.")], "rejected": [*HH_TURNS, bot("No."), bot("Five.")]},
        {"prompt": HH_TURNS, "chosen": [bot("Yes, 4.")], "rejected": [bot("No."), bot("Five.")]},
    ),
    "implicit prompt answers share their first turn": (
        {"chosen": [user("Hi?"), bot("Hm."), bot("Hello.")], "rejected": [user("Hi?"), bot("Hm."), bot("Bye.")]},
        {"prompt": [user("Hi?")], "chosen": [bot("Hm."), bot("Hello.")], "rejected": [bot("Hm."), bot("Bye.")]},
    ),
}


@pytest.mark.parametrize("kind", PREFERENCE_ROWS)
def test_preference_shapes_normalise_to_prompt_chosen_rejected_turns(tmp_path: Path, kind: str) -> None:
    row, expected = PREFERENCE_ROWS[kind]
    data = load_data(write(tmp_path / "p.jsonl", [row]))
    assert data.format == "preference" and not data.bad
    assert data.rows[0][1] == expected
    assert to_trl(data.rows[0][1], "responses") == expected


UNPAIRED_ROWS = {
    "kto text": ({"prompt": "Hi?", "completion": "Hello.", "label": True}, True),
    "kto turn lists": ({"prompt": [user("Hi?")], "completion": [bot("Hello.")], "label": False}, False),
    "kto 1/0": ({"prompt": "Hi?", "completion": "Hello.", "label": 0}, False),
    "thumbs emoji": ({"prompt": "Hi?", "response": "Hello.", "thumbs": "👍"}, True),
    "thumbs word": ({"prompt": "Hi?", "response": "Hello.", "thumbs": " Down "}, False),
    "rating": ({"prompt": "Hi?", "response": "Hello.", "rating": "GOOD"}, True),
    "feedback": ({"prompt": "Hi?", "response": "Hello.", "feedback": "no"}, False),
    "label with response": ({"prompt": "Hi?", "response": "Hello.", "label": "true"}, True),
    "completion with thumbs": ({"prompt": "Hi?", "completion": "Hello.", "thumbs": "up"}, True),
}


@pytest.mark.parametrize("kind", UNPAIRED_ROWS)
def test_unpaired_shapes_normalise_to_prompt_completion_label(tmp_path: Path, kind: str) -> None:
    row, label = UNPAIRED_ROWS[kind]
    data = load_data(write(tmp_path / "u.jsonl", [row]))
    assert data.format == "unpaired" and not data.bad
    expected = {"prompt": [user("Hi?")], "completion": [bot("Hello.")], "label": label}
    assert data.rows[0][1] == expected
    assert to_trl(data.rows[0][1], "responses") == expected


@pytest.mark.parametrize(
    "label,expected",
    [("yes", True), ("No", False), ("FALSE", False), ("1", True), ("bad", False), ("👎", False), (1.0, True)],
)
def test_every_label_spelling(label: object, expected: bool) -> None:
    row = {"prompt": "Hi?", "completion": "Hello.", "label": label}
    assert NORMALISERS["unpaired"](row)["label"] is expected


def test_unpaired_human_assistant_prompt_becomes_turns(tmp_path: Path) -> None:
    row = {"prompt": HH_PROMPT, "completion": " Yes, 4.", "label": "up"}
    data = load_data(write(tmp_path / "u.jsonl", [row]), "unpaired")
    assert data.rows[0][1] == {"prompt": HH_TURNS, "completion": [bot("Yes, 4.")], "label": True}


def test_unpaired_rows_from_csv(tmp_path: Path) -> None:
    rows = [{"prompt": "Hi?", "response": "Hello.", "thumbs": "up"}, {"prompt": "Hi?", "response": "Go.", "thumbs": 0}]
    data = load_data(write(tmp_path / "u.csv", rows))
    assert data.format == "unpaired" and [row["label"] for _, row in data.rows] == [True, False]


def test_system_prompt_is_added_to_preference_and_unpaired_prompts(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    rows = [UNPAIRED_ROWS["kto text"][0], PREFERENCE_ROWS["hh-rlhf"][0]]
    unpaired = load_data(write(tmp_path / "u.jsonl", rows[:1]), system_prompt="Be brief.")
    assert unpaired.rows[0][1]["prompt"] == [system, user("Hi?")]
    preference = load_data(write(tmp_path / "p.jsonl", rows[1:]), system_prompt="Be brief.")
    assert preference.rows[0][1]["prompt"] == [system, *HH_TURNS]


def test_render_puts_the_answer_after_the_prompt() -> None:
    class Template:
        def apply_chat_template(self, turns: list[dict], tokenize: bool) -> str:
            return "|".join(turn["content"] for turn in turns)

    unpaired = {"prompt": [user("Hi?")], "completion": [bot("Hello.")], "label": True}
    preference = {"prompt": [user("Hi?")], "chosen": [bot("Hello.")], "rejected": [bot("Go.")]}
    assert render(unpaired, Template()) == render(preference, Template()) == "Hi?|Hello."


def test_chosen_rejected_columns_do_not_take_other_formats_rows() -> None:
    extra = {"chosen": "x", "rejected": "y"}
    assert detect_format([EXAMPLES["qa"] | extra], "x") == "qa"
    assert detect_format([MESSAGES | extra], "x") == "messages"
    assert detect_format([{"text": "t"} | extra], "x") == "preference"
    with pytest.raises(ValueError, match=r"preference: chosen, prompt, rejected \| chosen, rejected;"):
        detect_format([{"title": "t"}], "x")


BAD_PREFERENCE_ROWS = [
    ("missing rejected", {"prompt": "Hi?", "chosen": "Hello."}, "missing field 'rejected'"),
    ("empty chosen", {"prompt": "Hi?", "chosen": " ", "rejected": "Go."}, "field 'chosen' is empty"),
    ("empty prompt", {"prompt": "", "chosen": "Hello.", "rejected": "Go."}, "field 'prompt' is empty"),
    ("identical", {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}, "are identical"),
    ("identical hh", {"chosen": HH_PROMPT + " No.", "rejected": HH_PROMPT + "  No."}, "are identical"),
    (
        "hh prompt ending with an answer",
        {"prompt": "Human: Hi?\n\nAssistant: Hello.", "chosen": "x", "rejected": "y"},
        "'prompt' must end with a Human turn",
    ),
    (
        "hh empty turn",
        {"prompt": "\n\nHuman:\n\nAssistant:", "chosen": "x", "rejected": "y"},
        "field 'prompt' turn 1 (Human) is empty",
    ),
    (
        "hh prompts differ",
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Yo?\n\nAssistant: Go."},
        "do not share a prompt: they differ at turn 1",
    ),
    (
        "hh differ before last user turn",
        {
            "chosen": HH_PROMPT + " Yes.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: Ok\n\nAssistant: No.",
        },
        "they differ at turn 2",
    ),
    (
        "hh answer missing",
        {"chosen": HH_PROMPT + " Yes.", "rejected": HH_PROMPT},
        "'rejected' must end with an assistant turn",
    ),
    (
        "implicit prompt not a conversation",
        {"chosen": "Hello.", "rejected": "Go."},
        "field 'chosen' must be a whole conversation",
    ),
    (
        "implicit turn lists differ in the prompt",
        {"chosen": [user("Hi?"), bot("Hello.")], "rejected": [user("Yo?"), bot("Go.")]},
        "do not share a prompt",
    ),
    (
        "answer with a user turn",
        {"prompt": "Hi?", "chosen": [bot("Hello."), user("Ok")], "rejected": "Go."},
        "'chosen' must hold only assistant turns",
    ),
]


@pytest.mark.parametrize("kind,row,reason", BAD_PREFERENCE_ROWS, ids=[b[0] for b in BAD_PREFERENCE_ROWS])
def test_bad_preference_rows(tmp_path: Path, kind: str, row: dict, reason: str) -> None:
    good = PREFERENCE_ROWS["text"][0]
    data = load_data(write(tmp_path / "p.jsonl", [good, row]), "preference")
    assert len(data.rows) == 1 and data.bad[0].number == 2
    assert reason in data.bad[0].reason


ACCEPTED = "expected true/false, 1/0, up/down, good/bad, yes/no or 👍/👎"
BAD_UNPAIRED_ROWS = [
    ("maybe", {"prompt": "Hi?", "completion": "Hello.", "label": "maybe"}, f"field 'label' is 'maybe'; {ACCEPTED}"),
    ("rating 3", {"prompt": "Hi?", "response": "Hello.", "rating": 3}, f"field 'rating' is 3; {ACCEPTED}"),
    (
        "no label",
        {"prompt": "Hi?", "completion": "Hello."},
        f"missing field 'label' (or 'thumbs', 'rating', 'feedback'); {ACCEPTED}",
    ),
    ("no completion", {"prompt": "Hi?", "label": True}, "missing field 'completion' (or 'response')"),
    ("no prompt", {"completion": "Hello.", "label": True}, "missing field 'prompt'"),
    ("empty response", {"prompt": "Hi?", "response": "", "label": True}, "field 'response' is empty"),
    ("empty prompt turns", {"prompt": [], "completion": "Hello.", "label": True}, "'prompt' has no turns"),
]


@pytest.mark.parametrize("kind,row,reason", BAD_UNPAIRED_ROWS, ids=[b[0] for b in BAD_UNPAIRED_ROWS])
def test_bad_unpaired_rows(tmp_path: Path, kind: str, row: dict, reason: str) -> None:
    good = UNPAIRED_ROWS["kto text"][0]
    data = load_data(write(tmp_path / "u.jsonl", [good, row]), "unpaired")
    assert len(data.rows) == 1 and data.bad[0].number == 2
    assert data.bad[0].reason == reason


def test_malformed_preference_file_names_every_bad_line(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {"prompt": "Hi?", "chosen": "Hello."},
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Yo?\n\nAssistant: Go."},
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
    ]
    data = load_data(write(tmp_path / "mixed.jsonl", rows))
    assert data.format == "preference" and [n for n, _ in data.rows] == [1, 4]
    assert [(b.label, b.reason.split(":")[0]) for b in data.bad] == [
        ("line 2", "missing field 'rejected'"),
        ("line 3", "'chosen' and 'rejected' do not share a prompt"),
    ]
    with pytest.raises(DataError) as err:
        check_bad_rows(data, tolerated=0)
    assert "2 of 4 lines are bad" in str(err.value)
    assert "line 2: missing field 'rejected'" in str(err.value)
    assert "line 3: 'chosen' and 'rejected' do not share a prompt" in str(err.value)


def test_malformed_unpaired_file_names_every_bad_line(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Hi?", "completion": "Hello.", "label": "up"},
        {"prompt": "Hi?", "completion": "Hello.", "label": "maybe"},
        {"prompt": "Hi?", "completion": "Hello."},
    ]
    data = load_data(write(tmp_path / "kto.jsonl", rows))
    assert data.format == "unpaired" and [n for n, _ in data.rows] == [1]
    with pytest.raises(DataError) as err:
        check_bad_rows(data, tolerated=1)
    message = str(err.value)
    assert f"line 2: field 'label' is 'maybe'; {ACCEPTED}" in message
    assert "line 3: missing field 'label'" in message
