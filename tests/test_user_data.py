"""A researcher's own data as it comes: every layout (TRL's three preference
variants, rankings, SFT's Alpaca / prompt-completion / messages), every container
(.jsonl .json .parquet, a `datasets` folder, the hub cache, TFDS offline), and
every bad input named by file:line (or record) and field."""

import json
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import common
from configs import sft as sft_config
from research.data import (comparisons, instructions, layouts, preferences, sources, stats,
                           templates, tokenizer)
from research.errors import ConfigError, DataError

USER = {"role": "user", "content": "Name a calm film."}
SYSTEM = {"role": "system", "content": "Be brief."}


def said(content):
  return [{"role": "assistant", "content": content}]


@pytest.mark.parametrize("record,prompt,responses", [
    ({"prompt": "p", "chosen": "good", "rejected": "bad"}, "p", ["good", "bad"]),
    # TRL explicit prompt, conversational
    ({"prompt": [SYSTEM, USER], "chosen": said("Harbor."), "rejected": said("No.")},
     [SYSTEM, USER], ["Harbor.", "No."]),
    # TRL implicit prompt, conversational: the shared turns are the prompt
    ({"chosen": [USER] + said("Harbor."), "rejected": [USER] + said("No.")},
     [USER], ["Harbor.", "No."]),
    # TRL implicit prompt, text: the common prefix, backed off to before the space
    ({"chosen": "Q: best film? A: Harbor", "rejected": "Q: best film? A: none"},
     "Q: best film? A:", [" Harbor", " none"]),
    # A message-list prompt with string responses is a conversation, not its repr
    ({"prompt": [USER], "chosen": "Harbor.", "rejected": "No."}, [USER], ["Harbor.", "No."]),
    ({"prompt": "p", "responses": ["a", said("b"), "c"], "ranking": [2, 0, 1]}, "p",
     ["a", "b", "c"]),
])
def test_preference_layouts(record, prompt, responses):
  out = layouts.preference(record, "f.jsonl:3")
  assert out["prompt"] == prompt and out["responses"] == responses
  assert out["where"] == "f.jsonl:3"
  assert out["ranks"] == record.get("ranking", [0, 1])


@pytest.mark.parametrize("record,kind,expected", [
    ({"instruction": "i", "input": None, "output": "o", "task": "t"}, "alpaca",
     {"instruction": "i", "input": "", "output": "o", "task": "t"}),
    ({"prompt": "The film", "completion": " was calm."}, "prompt_completion",
     {"prompt": "The film", "completion": " was calm."}),
    ({"prompt": [USER], "completion": said("Harbor.")}, "chat",
     {"messages": [USER] + said("Harbor.")}),
    ({"prompt": [SYSTEM, USER], "completion": "Harbor."}, "chat",
     {"messages": [SYSTEM, USER] + said("Harbor.")}),
    ({"messages": [USER] + said("Harbor."), "id": 7}, "chat",
     {"messages": [USER] + said("Harbor."), "id": 7}),
])
def test_sft_layouts(record, kind, expected):
  out = layouts.sft(record, "f.jsonl:1")
  assert layouts.sft_kind(out) == kind
  assert out == {**expected, "where": "f.jsonl:1"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = ["Name a calm film. Harbor was calm, No, good, bad, the film was calm and slow."] * 50
  return tokenizer.train(texts + instructions.boilerplate(5), 128)


@pytest.mark.parametrize("template", ["alpaca", "chat", "none"])
def test_prompt_completion_renders_under_every_template(tok, template):
  record = layouts.sft({"prompt": "Name a calm film.", "completion": " Harbor."}, "r")
  ids, mask = templates.tokenize(record, template, tok)
  assert tok.decode(ids[mask.astype(bool)][:-1]).strip() == "Harbor."
  prompt_ids, answer = templates.generation_prompt(record, template, tok)
  assert list(ids[:len(prompt_ids)]) == prompt_ids and answer.strip() == "Harbor."
  if template == "none":  # TRL's standard prompt-completion: the text as it is
    assert tok.decode(ids[1:]).startswith("Name a calm film.")


def test_a_multi_turn_prompt_needs_a_chat_template(tok):
  record = layouts.preference({"prompt": [SYSTEM, USER], "chosen": "a", "rejected": "b"}, "f:2")
  with pytest.raises(DataError, match=r"f:2: a prompt of 2 messages .* needs "
                                      r"config.data.template='chat' or 'hf_chat'"):
    comparisons.encode([record], tok, "alpaca", 64, 2)
  examples, _ = comparisons.encode([record], tok, "chat", 64, 2)
  assert examples[0]["response_mask"].any()


RECORDS = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


def write(path, records):
  ext = os.path.splitext(str(path))[1]
  if ext == ".jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
  elif ext == ".json":
    path.write_text(json.dumps(records))
  elif ext == ".parquet":
    pq.write_table(pa.Table.from_pylist(records), str(path))
  return str(path)


def data(source, **over):
  return common.preference_data(source=source, holdout_every=5, **over)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_every_file_type_reads_the_same_records(tmp_path, ext):
  path = write(tmp_path / f"prefs{ext}", RECORDS)
  train = preferences.preference_records(data(path), "train")
  held = preferences.preference_records(data(path), "validation")
  assert [r["prompt"] for r in held] == ["p0", "p5"]
  assert [r["responses"] for r in train][:2] == [["good 1", "bad 1"], ["good 2", "bad 2"]]


def test_hugging_face_folders_and_hub_cache(tmp_path, monkeypatch):
  import datasets  # pylint: disable=g-import-not-at-top
  one = tmp_path / "saved"
  datasets.Dataset.from_list(RECORDS).save_to_disk(str(one))
  assert len(preferences.preference_records(data(str(one)), "train")) == 8  # held out 1 in 5
  both = tmp_path / "saved_dict"
  datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:7]),
                        "test": datasets.Dataset.from_list(RECORDS[7:])}).save_to_disk(str(both))
  held = preferences.preference_records(data(str(both)), "validation")
  assert [r["prompt"] for r in held] == ["p7", "p8", "p9"]  # its own split (tfds_splits)
  # The hub cache: datasets--ORG--NAME/refs/main names a snapshot of data files.
  repo = tmp_path / "hub" / "datasets--someone--prefs"
  snapshot = repo / "snapshots" / "abc123" / "data"
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("abc123")
  write(snapshot / "train-00000-of-00001.parquet", RECORDS[:6])
  write(snapshot / "test-00000-of-00001.parquet", RECORDS[6:])
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  assert len(preferences.preference_records(data("hf:someone/prefs"), "train")) == 6
  assert len(preferences.preference_records(data("hf:someone/prefs"), "validation")) == 4
  with pytest.raises(DataError, match=r"hf:someone/other is not in the Hugging Face hub cache"):
    preferences.preference_records(data("hf:someone/other"), "train")


def test_field_map_renames_for_files_too(tmp_path):
  path = write(tmp_path / "qa.jsonl", [{"question": f"q{i}", "good": "a", "bad": "b"}
                                       for i in range(10)])
  d = data(path)
  d.field_map.update({"prompt": "question", "chosen": "good", "rejected": "bad"})
  assert preferences.preference_records(d, "train")[0]["prompt"] == "q1"
  s = sft_config.get_config("smoke").data
  s.source, s.holdout_every = path, 5
  s.field_map.update({"instruction": "question", "output": "good", "input": "=context"})
  record = instructions.instruction_records(s, "train")[0]
  assert (record["instruction"], record["input"], record["output"]) == ("q1", "context", "a")
  d.field_map.prompt = "title"
  with pytest.raises(DataError, match=r"qa\.jsonl:1: no field 'title' "
                                      r"\(config.data.field_map.prompt\)"):
    preferences.preference_records(d, "train")


def sft_data(source):
  d = sft_config.get_config("smoke").data
  d.source, d.holdout_every = source, 5
  return d


PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
ALPACA = {"instruction": "i", "output": "o"}

# (file name, content (records, or raw bytes), reader, expected message fragment)
BAD_DATA = [
    ("p.jsonl", [PAIR, {**PAIR, "chosen": None}], "prefs",
     r"p\.jsonl:2: field 'chosen' is null; expected a string or one assistant message"),
    ("p.jsonl", [PAIR, {**PAIR, "rejected": 3}], "prefs", r"p\.jsonl:2: field 'rejected' is int 3"),
    ("p.jsonl", [{**PAIR, "prompt": {"text": "p"}}], "prefs",
     r"p\.jsonl:1: field 'prompt' is dict .*expected a string or a list of messages"),
    ("p.jsonl", [{**PAIR, "chosen": said("a") + said("b")}], "prefs",
     r"p\.jsonl:1: field 'chosen' has 2 message\(s\) .*a response is one assistant message"),
    ("p.jsonl", [{**PAIR, "prompt": [USER] + said("x")}], "prefs",
     r"p\.jsonl:1: field 'prompt' ends with an assistant message"),
    ("p.jsonl", [{**PAIR, "prompt": [{"role": "bot", "content": "x"}]}], "prefs",
     r"p\.jsonl:1: prompt\[0\] is dict .*a message needs 'role' in"),
    ("p.jsonl", [{**PAIR, "prompt": [{"role": "user", "content": None}]}], "prefs",
     r"p\.jsonl:1: prompt\[0\]\.content is null"),
    ("p.jsonl", [{"chosen": [USER] + said("a"), "rejected": said("b")}], "prefs",
     r"p\.jsonl:1: 'chosen' and 'rejected' share no first turns"),
    ("p.jsonl", [{"chosen": "yes", "rejected": "no"}], "prefs",
     r"p\.jsonl:1: 'chosen' and 'rejected' share no prompt text"),
    ("p.jsonl", [{"prompt": "p", "completion": "c", "label": True}], "prefs",
     r"p\.jsonl:1: an unpaired preference record \{prompt, completion, label\} \(KTO style\); "
     r"only --config.objective.name=kto \(configs/kto.py\) trains on unpaired labels"),
    ("s.jsonl", [ALPACA, {"prompt": "p", "completion": "c", "label": False}], "sft",
     r"s\.jsonl:2: an unpaired preference record"),
    ("p.jsonl", [{**PAIR, "margin": "big"}], "prefs", r"p\.jsonl:1: field 'margin' is str"),
    ("p.jsonl", [{"prompt": "p", "responses": ["a"], "ranking": [0]}], "prefs",
     r"p\.jsonl:1: field 'responses' is list .*at least 2 responses"),
    ("p.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, "1"]}], "prefs",
     r"p\.jsonl:1: 'ranking' must give a rank >= 0"),
    ("p.jsonl", [{"question": "q", "answer": "a"}], "prefs",
     r"p\.jsonl:1: unknown preference layout with fields \['answer', 'question'\]"),
    ("s.jsonl", [ALPACA, {"instruction": ["i"], "output": "o"}], "sft",
     r"s\.jsonl:2: field 'instruction' is list \[\"i\"\]; expected a string"),
    ("s.jsonl", [{"instruction": "i", "output": None}], "sft", r"s\.jsonl:1: field 'output' is null"),
    ("s.jsonl", [{"prompt": "p", "completion": 5}], "sft", r"s\.jsonl:1: field 'completion' is int"),
    ("s.jsonl", [{"messages": [USER]}], "sft",
     r"s\.jsonl:1: a chat record needs at least one assistant message"),
    ("s.jsonl", [{"messages": "hi"}], "sft", r"s\.jsonl:1: field 'messages' is str"),
    ("s.jsonl", [{"text": "t"}], "sft", r"s\.jsonl:1: unknown SFT layout with fields \['text'\]"),
    ("t.jsonl", [{"text": "fine"}] * 5 + [{"text": None}], "text",
     r"t\.jsonl:6: field 'text' is null; expected a string"),
    ("t.jsonl", [{"text": "fine"}, {"text": ["a", "b"]}], "text", r"t\.jsonl:2: field 'text' is list"),
    ("t.jsonl", [{"body": "x"}], "text", r"t\.jsonl:1: no field 'text' \(config.data.text_field\)"),
    ("t.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "text",
     r"t\.jsonl:2: not UTF-8 \(byte 0xe9 at byte offset 13 of the line\)"),
    ("t.txt", b"fine\nna\xefve\n", "text", r"t\.txt:2: not UTF-8 \(byte 0xef at byte offset 2"),
    ("t.jsonl", b"", "text", r"t\.jsonl: no records \(the file is empty\)"),
    ("p.jsonl", b"\n\n", "prefs", r"p\.jsonl: no records"),
    ("p.json", b'{"rows": 3}', "prefs", r"p\.json: expected a JSON list of records"),
    ("p.json", b'[{"prompt": "p",\n "chosen": }]', "prefs", r"p\.json:2: malformed JSON"),
    ("p.jsonl", b'{"prompt": "p"\n', "prefs", r"p\.jsonl:1: malformed JSON"),
    ("p.jsonl", b'["p", "a", "b"]\n', "prefs", r"p\.jsonl:1: expected a JSON object of fields"),
    ("p.parquet", b"not parquet", "prefs", r"p\.parquet: not a readable parquet file"),
    ("p.jsonl", [PAIR], "prefs", r"p\.jsonl: 1 record\(s\) leave no train records "
                                 r"\(config.data.holdout_every=5"),
]


@pytest.mark.parametrize("name,content,reader,fragment", BAD_DATA,
                         ids=[f"{i}-{row[0]}" for i, row in enumerate(BAD_DATA)])
def test_bad_data_is_named_by_file_line_and_field(tmp_path, name, content, reader, fragment):
  path = tmp_path / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in content))
  read = {"prefs": lambda: preferences.preference_records(data(str(path)), "train"),
          "sft": lambda: instructions.instruction_records(sft_data(str(path)), "train"),
          "text": lambda: sources.text_source(common.data(source=str(path), holdout_every=5),
                                              "train")}[reader]
  with pytest.raises(DataError, match=fragment):
    read()


def test_unknown_file_types_and_missing_files_name_the_key(tmp_path):
  path = tmp_path / "prefs.xml"
  path.write_text("<prompt/>\n")
  with pytest.raises(ConfigError, match=r"config.data.source=.*prefs\.xml.*unknown file type "
                                        r"'\.xml'"):
    preferences.preference_records(data(str(path)), "train")
  with pytest.raises(FileNotFoundError, match=r"config.data.source=.*missing\.jsonl"):
    preferences.preference_records(data(str(tmp_path / "missing.jsonl")), "train")


def test_too_little_text_for_the_tokenizer_and_too_long_examples():
  with pytest.raises(DataError, match=r"3 texts allow at most \d+ tokenizer pieces, fewer than "
                                      r"config.model.vocab_size=1024: lower model.vocab_size"):
    tokenizer.train(["a calm film", "a slow film", "no"], 1024)
  from research.data import sft  # pylint: disable=g-import-not-at-top
  tok = tokenizer.train(["the film was calm and slow and long"] * 40, 48)
  records = [layouts.sft({"prompt": "p", "completion": "the film was calm " * 20}, "s.jsonl:4")]
  with pytest.raises(DataError, match=r"every one of 1 examples is longer than "
                                      r"config.data.seq_len=16 .*the longest, s\.jsonl:4, has "
                                      r"\d+ tokens"):
    sft.build(records, tok, "none", 16)


def test_tfds_never_downloads_and_names_the_command(tmp_path):
  d = common.data(source="tfds:imdb_reviews", tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(DataError, match=r"tfds:imdb_reviews is not prepared in .*tfds and nothing "
                                      r"is downloaded here; run: tfds build imdb_reviews "
                                      r"--data_dir=.*--file_format=array_record"):
    sources.text_source(d, "train")
  assert not any(files for _, _, files in os.walk(tmp_path))  # nothing written
  d.source = "tfds:no_such_dataset"
  with pytest.raises(DataError, match=r"'tfds:no_such_dataset': no TFDS dataset of that name"):
    sources.text_source(d, "train")


def test_clm_data_summary_counts_documents_and_unk(tmp_path):
  path = tmp_path / "docs.txt"
  path.write_text("".join(f"plain document number {i}\n" for i in range(19)) + "日本 映画\n")
  d = common.data(source=str(path), holdout_every=10)
  train, held = sources.text_source(d, "train"), sources.text_source(d, "validation")
  tok = tokenizer.train([train[i]["text"] for i in range(len(train) - 1)] * 20, 40)
  tokens = [tok.encode(train[i]["text"]) for i in range(len(train))]
  summary = stats.text_summary(train, held, tokens, tok.unk_id)
  assert (summary["train_documents"], summary["heldout_documents"]) == (18, 2)
  assert summary["exact"] and summary["train_tokens"] == sum(
      len(tok.encode(train[i]["text"])) for i in range(len(train)))
  assert summary["unk_rate"] > 0.001
  assert "tokenizer_byte_fallback=True" in stats.describe(summary)


def test_ptx_defaults_to_the_stage_s_own_data(tmp_path):
  from configs import rlhf as rlhf_config  # pylint: disable=g-import-not-at-top
  from research.stages import rlhf  # pylint: disable=g-import-not-at-top
  c = rlhf_config.get_config("smoke")
  c.data.source = write(tmp_path / "prefs.jsonl", RECORDS)
  c.data.holdout_every = 5
  texts = rlhf.ptx_source(c, "train")
  assert texts[0] == {"text": "p1\ngood 1"}  # the prompt and its preferred response
  c.data.source = "embedded"
  assert len(rlhf.ptx_source(c, "train")) > 1000  # the embedded corpus


def test_the_embedded_scorer_judges_only_the_embedded_data():
  from research import evaluation  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict({"data": {"source": "my.jsonl", "prompt_format": "instruction"},
                                 "evaluate": {"ground_truth": "auto"}})
  assert evaluation.ground_truth_format(c) is None
  c.evaluate.ground_truth = "embedded_sentiment"
  assert evaluation.ground_truth_format(c) == "instruction"
  c.evaluate.ground_truth, c.data.source = "auto", "embedded"
  assert evaluation.ground_truth_format(c) == "instruction"
  c.evaluate.ground_truth = "movie"
  with pytest.raises(ConfigError, match="config.evaluate.ground_truth='movie'"):
    evaluation.ground_truth_format(c)


def test_distinct_prompts_include_conversations():
  records = [layouts.preference(r, "f") for r in (
      {"prompt": [USER], "chosen": "a", "rejected": "b"},
      {"prompt": [USER], "chosen": "c", "rejected": "d"},
      {"prompt": "text", "chosen": "a", "rejected": "b"})]
  assert preferences.distinct_prompts(records) == ["text", [USER]]
  assert np.all([isinstance(p, (str, list)) for p in preferences.distinct_prompts(records)])
