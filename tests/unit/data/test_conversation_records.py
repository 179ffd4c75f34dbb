"""Reading conversation files (JSON, JSONL, ids) and checking records (both styles, media, markers, errors)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from mimo.data.conversations import (
    Conversation,
    MediaItem,
    RecordError,
    Turn,
    find_markers,
    parse_record,
    read_records,
)


def llava(conversations, **media):
    return {"conversations": conversations, **media}


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def parse(record, root, **kwargs):
    return parse_record("r1", record, root=root, **kwargs)


# ----------------------------------------------------------------------------------------------- read_records


def test_json_list_ids_from_field_or_index(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([{"id": "a", "x": 1}, {"id": 7}, {"x": 2}, {"id": True}, {"id": ""}, {"id": 1.5}, [1, 2], "s"])
    )
    records = read_records(path)
    assert [record_id for record_id, _ in records] == ["a", "7", "#2", "#3", "#4", "#5", "#6", "#7"]
    assert records[0][1] == {"id": "a", "x": 1}
    for record_id, bad in records[6:]:
        assert isinstance(bad, RecordError) and bad.record_id == record_id
    assert str(records[6][1]) == "record #6: is not a JSON object but a list"
    assert str(records[7][1]) == "record #7: is not a JSON object but a string"


def test_jsonl_skips_blank_lines_and_keeps_reading_after_bad_ones(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = ['{"id": "a"}', "", "   ", "{not json", "[1]", '{"id": 5, "k": 1}', '{"k": 2}', "null"]
    path.write_text("\n".join(lines) + "\n")
    records = read_records(path)
    assert [record_id for record_id, _ in records] == ["a", "line 4", "line 5", "5", "line 7", "line 8"]
    assert records[0][1] == {"id": "a"} and records[3][1] == {"id": 5, "k": 1} and records[4][1] == {"k": 2}
    bad_json, not_object, null = records[1][1], records[2][1], records[5][1]
    assert isinstance(bad_json, RecordError)
    assert str(bad_json) == (
        "record line 4: is not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert str(not_object) == "record line 5: is not a JSON object but a list"
    assert str(null) == "record line 8: is not a JSON object but a null"


def test_json_with_byte_order_mark_reads(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": "x"}]).encode())
    assert read_records(path) == [("x", {"id": "x"})]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.json", '{"conversations": []}', r"data\.json must hold a JSON list of records, got a object"),
        ("data.json", "[1, 2", r"data\.json is not valid JSON"),
        ("data.txt", "[]", r"data\.txt must end in \.json .* or \.jsonl"),
        ("data.jsonl", b"\xff\xfe\x00bad", r"cannot read conversation file .*data\.jsonl"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        read_records(path)


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read conversation file .*nope\.jsonl"):
        read_records(tmp_path / "nope.jsonl")


def test_record_error_is_a_value_error_that_pickles():
    error = RecordError("line 3", "has no assistant turn")
    assert isinstance(error, ValueError)
    assert str(error) == "record line 3: has no assistant turn"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.record_id, copy.message, str(copy)) == ("line 3", "has no assistant turn", str(error))


# ------------------------------------------------------------------------------------------- parse_record: turns


def test_llava_record(tmp_path):
    record = llava([human("<image>\nWhat is it?"), gpt("A cat.")], image="coco/1.jpg")
    conversation = parse(record, tmp_path)
    assert conversation == Conversation(
        id="r1",
        turns=(Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A cat.")),
        media=(MediaItem("image", (tmp_path / "coco/1.jpg").resolve()),),
    )


def test_chat_record_and_all_role_names(tmp_path):
    record = {
        "conversations": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert [(t.role, t.text) for t in parse(record, tmp_path).turns] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]
    froms = [{"from": name, "value": name} for name in ("system", "human", "user", "gpt", "assistant")]
    assert [t.role for t in parse(llava(froms), tmp_path).turns] == ["system", "user", "user", "assistant", "assistant"]


def test_styles_may_differ_between_turns(tmp_path):
    record = llava([human("q"), {"role": "assistant", "content": "a"}])
    assert [t.role for t in parse(record, tmp_path).turns] == ["user", "assistant"]


def test_text_only_record_and_empty_texts_are_fine(tmp_path):
    conversation = parse(llava([human(""), gpt("")]), tmp_path)
    assert conversation.media == () and conversation.turns == (Turn("user", ""), Turn("assistant", ""))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1], "is not a JSON object but a list"),
        ({"image": "a.jpg"}, r"has no 'conversations' \(keys: \['image'\]\)"),
        ({"conversations": "hi"}, "'conversations' must be a list of turns, got a string"),
        ({"conversations": []}, "'conversations' is empty"),
        (llava([human("q"), "a"]), "turn 1 is not an object but a string"),
        (llava([human("q"), {"from": "bot", "value": "a"}]), r"turn 1 has from='bot'; expected one of \['assistant', "),
        (llava([{"role": "human", "content": "q"}, gpt("a")]), r"turn 0 has role='human'; expected one of"),
        (llava([{"from": None, "value": "q"}, gpt("a")]), "turn 0 has from=None"),
        (llava([human("q"), {"from": "gpt", "value": 3}]), "turn 1 'value' must be a string, got a number"),
        (llava([human("q"), {"role": "assistant", "content": [{"type": "text"}]}]), "turn 1 'content' must be a str"),
        (llava([human("q"), {"from": "gpt", "content": "a"}]), r"turn 1 mixes \['from'\] with \['content'\]"),
        (llava([human("q"), {"speaker": "gpt", "text": "a"}]), "turn 1 has neither 'from'/'value' nor 'role'/'con"),
        (llava([human("q"), {"from": "gpt"}]), "turn 1 has 'from' but no 'value'"),
        (llava([human("q"), {"content": "a"}]), "turn 1 has 'content' but no 'role'"),
        (llava([{"from": "system", "value": "s"}, human("q")]), r"has no assistant turn to train on \(roles: \['sys"),
    ],
)
def test_bad_turns_raise_record_errors(tmp_path, record, message):
    with pytest.raises(RecordError, match=message) as caught:
        parse(record, tmp_path)
    assert caught.value.record_id == "r1" and str(caught.value).startswith("record r1: ")


# ------------------------------------------------------------------------------------------- parse_record: media


@pytest.mark.parametrize(
    ("media", "kinds"),
    [
        ({"image": "a.jpg"}, ["image"]),
        ({"image": ["a.jpg", "b.jpg"]}, ["image", "image"]),
        ({"images": ["a.jpg"]}, ["image"]),
        ({"audio": "a.wav"}, ["audio"]),
        ({"audio": ["a.wav", "b.wav"]}, ["audio", "audio"]),
        ({"audios": ["a.wav"]}, ["audio"]),
        ({"image": None, "audios": []}, []),
    ],
)
def test_media_keys(tmp_path, media, kinds):
    markers = "".join({"image": "<image>", "audio": "<audio>"}[kind] for kind in kinds)
    conversation = parse(llava([human(markers + "q"), gpt("a")], **media), tmp_path)
    assert [item.kind for item in conversation.media] == kinds


def test_media_follow_marker_order_across_turns_and_kinds(tmp_path):
    record = llava(
        [human("<audio> then <image>"), gpt("ok"), human("<image><audio>"), gpt("done")],
        image=["i0.jpg", "i1.jpg"],
        audios=["a0.wav", "a1.wav"],
    )
    media = parse(record, tmp_path).media
    assert [(item.kind, item.path.name) for item in media] == [
        ("audio", "a0.wav"),
        ("image", "i0.jpg"),
        ("image", "i1.jpg"),
        ("audio", "a1.wav"),
    ]


def test_paths_resolve_under_root_and_may_use_dotdot_inside_it(tmp_path):
    record = llava([human("<image>"), gpt("a")], image="sub/../other/./x.jpg")
    assert parse(record, tmp_path).media[0].path == (tmp_path / "other" / "x.jpg").resolve()


def test_media_without_markers_go_before_the_first_user_turn(tmp_path):
    record = llava(
        [{"from": "system", "value": "sys"}, human("What?"), gpt("a"), human("More?"), gpt("b")],
        images=["a.jpg", "b.jpg"],
        audio="c.wav",
    )
    conversation = parse(record, tmp_path)
    assert conversation.turns[0].text == "sys"
    assert conversation.turns[1].text == "<image>\n<image>\n<audio>\nWhat?"
    assert conversation.turns[3].text == "More?"
    assert [item.path.name for item in conversation.media] == ["a.jpg", "b.jpg", "c.wav"]


def test_only_the_kind_without_markers_is_added(tmp_path):
    record = llava([human("Hear <audio>"), gpt("a")], image="a.jpg", audio="c.wav")
    conversation = parse(record, tmp_path)
    assert conversation.turns[0].text == "<image>\nHear <audio>"
    assert [item.kind for item in conversation.media] == ["image", "audio"]


def test_custom_markers(tmp_path):
    record = llava([human("[img] and [snd]"), gpt("a <image> b")], image="a.jpg", audio="b.wav")
    conversation = parse(record, tmp_path, markers={"image": "[img]", "audio": "[snd]"})
    assert [item.kind for item in conversation.media] == ["image", "audio"]
    assert conversation.turns[1].text == "a <image> b"  # not a marker here


@pytest.mark.parametrize(
    ("turns", "media", "message"),
    [
        ([human("<image> <image>"), gpt("a")], {"image": "a.jpg"}, "has 2 '<image>' marker.* but 1 image item"),
        ([human("<image>"), gpt("a")], {}, "has 1 '<image>' marker.* but 0 image item"),
        ([human("<audio>"), gpt("<audio>")], {"audio": "a.wav"}, "has 2 '<audio>' marker.* but 1 audio item"),
        ([{"from": "system", "value": "s"}, gpt("a")], {"image": "a.jpg"}, "image media without markers and no user"),
        ([human("q"), gpt("a")], {"image": "a.jpg", "images": ["b.jpg"]}, "gives both 'image' and 'images'"),
        ([human("q"), gpt("a")], {"image": 3}, "'image' must be a path or a list of paths, got a number"),
        ([human("q"), gpt("a")], {"images": "a.jpg"}, "'images' must be a list of paths, got a string"),
        ([human("<image>"), gpt("a")], {"image": [None]}, r"image\[0\]=None must be a non-empty path string"),
        ([human("<image>"), gpt("a")], {"image": [" "]}, r"image\[0\]=' ' must be a non-empty path string"),
        ([human("<image>"), gpt("a")], {"image": "/etc/passwd"}, "'/etc/passwd' is absolute; media paths must be"),
        ([human("<image>"), gpt("a")], {"image": "../x.jpg"}, "'../x.jpg' leads outside the media root"),
        ([human("<image>"), gpt("a")], {"image": "a/../../x.jpg"}, "leads outside the media root"),
    ],
)
def test_bad_media_raise_record_errors(tmp_path, turns, media, message):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RecordError, match=message):
        parse(llava(turns, **media), root)


def test_symlink_leaving_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RecordError, match="leads outside the media root"):
        parse(llava([human("<image>"), gpt("a")], image="link/x.jpg"), root)


def test_symlinked_root_is_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    media = parse(llava([human("<image>"), gpt("a")], image="x.jpg"), tmp_path / "alias").media
    assert media[0].path == real.resolve() / "x.jpg"


def test_media_of_a_kind_without_a_marker_is_refused(tmp_path):
    record = llava([human("<audio>"), gpt("a")], audio="a.wav")
    with pytest.raises(RecordError, match=r"has 1 audio item\(s\), but this data set takes only image media"):
        parse(record, tmp_path, markers={"image": "<image>"})


def test_missing_media_files_are_not_checked_here(tmp_path):
    media = parse(llava([human("<image>"), gpt("a")], image="does/not/exist.jpg"), tmp_path).media
    assert not media[0].path.exists()


@pytest.mark.parametrize(
    ("markers", "message"),
    [
        ({"video": "<video>"}, r"unknown media kinds \['video'\]"),
        ({"image": ""}, r"markers\['image'\]='' must be a non-empty string"),
        ({"image": "<m>", "audio": "<m>"}, "markers must differ per kind"),
    ],
)
def test_bad_markers_are_a_caller_error(tmp_path, markers, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse(llava([human("q"), gpt("a")]), tmp_path, markers=markers)
    assert not isinstance(caught.value, RecordError)


def test_find_markers_prefers_the_longer_marker():
    markers = {"image": "<img>", "audio": "<img>x"}
    assert find_markers("<img>x <img> <imgx", markers) == ["audio", "image"]
    assert find_markers("anything", {}) == []


def test_read_then_parse_end_to_end(tmp_path):
    path = tmp_path / "train.jsonl"
    good = llava([human("<image>\nq"), gpt("a")], id="ok", image="a.jpg")
    bad = llava([human("q")], id="noanswer")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    results = []
    for record_id, record in read_records(path):
        try:
            results.append(parse_record(record_id, record, root=tmp_path).id)
        except RecordError as error:
            results.append(str(error))
    assert results == ["ok", "record noanswer: has no assistant turn to train on (roles: ['user'])"]


def test_root_may_be_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    media = parse(llava([human("<image>"), gpt("a")], image="x.jpg"), Path("media")).media
    assert media[0].path == (tmp_path / "media" / "x.jpg").resolve() and media[0].path.is_absolute()
