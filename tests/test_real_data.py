"""Real data as researchers bring it: held-out sets disjoint from training whatever
the container, dataset folders of mixed file types read file by file, one layout
per dataset, gzip/CSV/BOM, the data summary and its `<unk>` warning, and one
long-prompt policy for training rows and generation."""

import gzip
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import common
from configs import sft as sft_config
from research.data import (comparisons, instructions, preferences, prompt_fit, readers, sft,
                           summary, templates, tokenizer)
from research.errors import DataError

RECORDS = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hh_pairs.jsonl.gz")


def data(source, **over):
  return common.preference_data(source=str(source), holdout_every=5, **over)


def jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def prompts_of(source, split, **over):
  return [r["prompt"] for r in preferences.preference_records(data(source, **over), split)]


# --- held-out sets never share a record with training -------------------------------

def test_a_dataset_dict_with_only_a_train_split_holds_out_disjointly(tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "train_only"
  datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(folder))
  train, held = prompts_of(folder, "train"), prompts_of(folder, "validation")
  assert held == ["p0", "p5", "p10", "p15"] and len(train) == 16
  assert not set(train) & set(held)  # used to train on all 20 and evaluate on 4 of them
  rows = preferences.preference_records(data(folder), "validation")
  assert "every 5th record of" in rows.holdout and "split 'train'" in rows.holdout
  assert "4 of 20" in rows.holdout


def test_a_folder_of_unsplit_files_holds_out_disjointly_and_reads_every_type(tmp_path):
  folder = tmp_path / "mixed"
  jsonl(folder / "part-a.jsonl", RECORDS[:10])
  pq.write_table(pa.Table.from_pylist(RECORDS[10:]), str(folder / "part-b.parquet"))
  (folder / "README.md").write_text("# a dataset card, not data\n")
  train, held = prompts_of(folder, "train"), prompts_of(folder, "validation")
  assert len(train) + len(held) == 20  # both file types, every record
  assert not set(train) & set(held) and len(held) == 4


def test_files_named_by_split_are_their_splits(tmp_path):
  folder = tmp_path / "snapshot"
  jsonl(folder / "data" / "train-00000-of-00002.jsonl", RECORDS[:8])
  pq.write_table(pa.Table.from_pylist(RECORDS[8:16]),
                 str(folder / "data" / "train-00001-of-00002.parquet"))
  with gzip.open(folder / "data" / "test.jsonl.gz", "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in RECORDS[16:])
  assert len(prompts_of(folder, "train")) == 16
  assert prompts_of(folder, "validation") == ["p16", "p17", "p18", "p19"]
  assert preferences.preference_records(data(folder), "validation").holdout is None


def test_folder_errors_name_the_file(tmp_path):
  folder = tmp_path / "bad"
  jsonl(folder / "train.jsonl", RECORDS[:5])
  (folder / "test.jsonl").write_text(json.dumps(RECORDS[0]) + '\n{"prompt": "p", "chosen": 1, '
                                     '"rejected": "b"}\n')
  with pytest.raises(DataError, match=r"bad/test\.jsonl:2: field 'chosen' is int"):
    prompts_of(folder, "validation")
  stray = tmp_path / "stray"
  jsonl(stray / "train.jsonl", RECORDS)
  jsonl(stray / "extra.jsonl", RECORDS)
  with pytest.raises(DataError, match=r"the names of extra\.jsonl give no split"):
    prompts_of(stray, "train")
  odd = tmp_path / "odd"
  jsonl(odd / "train.jsonl", RECORDS)
  (odd / "test.tsv").write_text("prompt\tchosen\n")
  with pytest.raises(DataError, match=r"1 file\(s\) of a type not read here \(test\.tsv\)"):
    prompts_of(odd, "train")


# --- file formats ------------------------------------------------------------------

def test_gzip_csv_bom_and_json_lines_named_json(tmp_path):
  gz = tmp_path / "prefs.jsonl.gz"
  gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode()))
  assert len(prompts_of(gz, "train")) == 16
  csv = tmp_path / "prefs.csv"
  out = io.StringIO()
  out.write("prompt,chosen,rejected\n")
  out.writelines(f'{r["prompt"]},"{r["chosen"]}, really",{r["rejected"]}\n' for r in RECORDS)
  csv.write_text(out.getvalue())
  rows = preferences.preference_records(data(csv), "train")
  assert rows[0]["responses"] == ["good 1, really", "bad 1"] and rows[0]["where"].endswith(":3")
  bom = tmp_path / "bom.jsonl"
  bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in RECORDS).encode())
  assert prompts_of(bom, "validation")[0] == "p0"  # the mark is not part of the first record
  lines = tmp_path / "lines.json"
  jsonl(lines, RECORDS)
  assert len(prompts_of(lines, "train")) == 16
  empty = tmp_path / "empty.json"
  empty.write_text("")
  with pytest.raises(DataError, match=r"empty\.json: no records \(the file is empty\)"):
    prompts_of(empty, "train")


def test_one_layout_per_dataset(tmp_path):
  mixed = jsonl(tmp_path / "mixed.jsonl", RECORDS[:3] + [{"chosen": "Q: x A: y",
                                                          "rejected": "Q: x A: z"}])
  with pytest.raises(DataError, match=r"records in 2 layouts \(an explicit prompt with ranked "
                                      r"responses \(standard\): 3 record\(s\), first "
                                      r".*mixed\.jsonl:1; \{chosen, rejected\} with an implicit "
                                      r"prompt \(standard\): 1 record\(s\), first .*:4\)"):
    prompts_of(mixed, "train")
  sft_mixed = jsonl(tmp_path / "sft.jsonl", [{"instruction": "i", "output": "o"}] * 4 + [
      {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}])
  c = sft_config.get_config("smoke").data
  c.source, c.holdout_every = str(sft_mixed), 5
  with pytest.raises(DataError, match=r"\{instruction, input, output\}: 4 record.*\{messages\}"):
    instructions.instruction_records(c, "train")


# --- prompts for sampling from any layout -------------------------------------------

def test_prompts_come_from_preference_and_sft_records(tmp_path):
  chat = jsonl(tmp_path / "chat.jsonl", [{"messages": [
      {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]}
      for i in range(10)])
  prompts = preferences.prompts(data(chat), "train")
  assert prompts[0] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "again"}]  # all before the last reply
  alpaca = jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"i{i}", "input": "ctx",
                                              "output": "o"} for i in range(10)])
  prompt = preferences.prompts(data(alpaca), "train")[0]
  assert prompt == {"instruction": "i1", "input": "ctx"}
  tok = tokenizer.train(["i1 ctx o Below is an instruction"] * 50, 64)
  rendered = templates.render_prompt(prompt, "alpaca", tok)
  assert rendered == templates.alpaca_prompt({"instruction": "i1", "input": "ctx"})
  assert "### Input:\nctx" in rendered  # as the SFT run saw it


# --- the long-prompt policy ---------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
  texts = [json.loads(line)["chosen"] for line in gzip.open(FIXTURE, "rt")]
  return tokenizer.train(texts * 3, 512)


def test_long_prompts_are_cut_from_the_left_or_dropped_for_generation(tok):
  hh = preferences.prompts(data(FIXTURE, template="none"), "train")
  long = sum(len(templates.prompt_ids(p, "none", tok)) > 448 for p in hh)
  assert 20 <= long < len(hh)  # the fixture keeps both kinds
  kept = prompt_fit.for_generation(hh, data(FIXTURE, template="none"), tok, max_len=512,
                                   max_new_tokens=48, bucket=16)
  assert kept.counts.truncated == long and len(kept.ids) == len(hh)
  assert max(map(len, kept.ids)) == 464  # (512 - 48) rounded down to the bucket
  for text, ids in zip(kept.texts, kept.ids):
    full = templates.prompt_ids(text, "none", tok)
    assert ids == full or (ids[0] == full[0] and ids[1:] == full[-(len(ids) - 1):])
  dropped = prompt_fit.for_generation(hh, data(FIXTURE, template="none", max_prompt_len=100,
                                               prompt_overflow="drop"), tok, max_len=512,
                                      max_new_tokens=48, bucket=16)
  stats = dropped.counts.as_dict()
  assert stats["dropped_why"]["prompt_too_long"] == len(hh) - len(dropped.ids) > 0
  assert all(len(ids) <= 100 for ids in dropped.ids)
  line = summary.describe("prompts", stats)
  assert "dropped: the prompt is too long and config.data.prompt_overflow='drop'" in line


def test_sft_rows_follow_the_same_policy(tok):
  records = [{"prompt": "word " * 300, "completion": "an answer", "where": "f.jsonl:1"},
             {"prompt": "short", "completion": "word " * 300, "where": "f.jsonl:2"},
             {"prompt": "short", "completion": "fine", "where": "f.jsonl:3"}]
  data_ = sft.build(records, tok, "none", 64)
  assert (data_.stats["truncated"], data_.stats["dropped"]) == (1, 1)
  assert data_.stats["first_dropped"] == {"response_too_long": "f.jsonl:2"}
  assert max(len(e["inputs"]) for e in data_.examples) == 64
  dropped = sft.build(records, tok, "none", 64, overflow="drop")
  assert dropped.stats["dropped_why"] == {"prompt_too_long": 1, "response_too_long": 1}
  capped = sft.build(records[:1], tok, "none", 512, max_prompt_len=10)
  assert int(np.argmax(capped.examples[0]["loss_mask"])) == 9  # 10 prompt tokens, then the answer


def test_the_data_summary_warns_when_the_tokenizer_cannot_spell_the_text(capsys):
  english = tokenizer.train(["a calm film about the sea"] * 50, 40)
  korean = [{"prompt": "영화 어땠어요?", "completion": "정말 좋았어요", "where": f"k.jsonl:{i}"}
            for i in range(10)]
  built = sft.build(korean, english, "none", 64)
  assert built.stats["unk_rate"] > 0.3
  report = summary.report({"train": built.stats}, holdout=None, tokenizer_from="the CLM run's")
  err = capsys.readouterr().err
  assert "data: train: 10 read -> 10 kept" in err and report["train"] is built.stats
  assert "warning: " in err and "of the training tokens are <unk>" in err
  assert "tokenizer_byte_fallback=True" in err
  english_ok = sft.build([{"prompt": "a calm", "completion": "film"}], english, "none", 64)
  assert summary.unk_warning(english_ok.stats["unk_rate"], "x") is None


def test_reward_and_dpo_rows_name_the_records_they_drop(tok):
  records = [layouts_pair("p " * 10, "fine", "f.jsonl:1"),
             layouts_pair("p", "word " * 400, "f.jsonl:2")]
  _, stats = comparisons.encode(records, tok, "none", 128, 2)
  line = summary.describe("train", stats, seq_len=128)
  assert "1 dropped: the response alone exceeds config.data.seq_len=128 (first: f.jsonl:2)" in line


def layouts_pair(prompt, chosen, where):
  return {"prompt": prompt, "responses": [chosen, "no"], "ranks": [0, 1], "where": where}


def test_readers_rows_report_how_they_held_out(tmp_path):
  path = jsonl(tmp_path / "x.jsonl", RECORDS)
  rows = readers.rows(data(path), "train")
  assert len(rows) == 16 and "every 5th record of" in rows.holdout and "train the other 16" \
      in rows.holdout


def test_a_conversational_prompt_completion_trains_the_completion_only(tok):
  from research.data import layouts  # pylint: disable=g-import-not-at-top
  turns = [{"role": "user", "content": "Tell me about the film."},
           {"role": "assistant", "content": "It is a calm film."},
           {"role": "user", "content": "And the ending?"}]
  record = layouts.sft({"prompt": turns, "completion": [
      {"role": "assistant", "content": "The ending is slow."}]}, "f.jsonl:1")
  ids, mask = templates.tokenize(record, "chat", tok)
  trained = [int(i) for i in ids[mask]]
  assert trained == tok.encode("The ending is slow.") + [tok.eos_id]  # TRL: completion only
  whole = layouts.sft({"messages": turns + [{"role": "assistant", "content": "x"}]}, "f:2")
  assert templates.tokenize(whole, "chat", tok)[1].sum() > len(tok.encode("x")) + 1  # chat: all


def test_a_users_tokenizer_is_trained_on_the_users_text_alone(tmp_path, monkeypatch):
  from research.stages import clm  # pylint: disable=g-import-not-at-top
  from tests.test_loop import tiny_config  # pylint: disable=g-import-not-at-top
  docs = tmp_path / "three.txt"
  docs.write_text("a calm film\na slow film\nno film at all\n")
  seen = []

  class Stop(Exception):
    pass

  def spy(texts, *args, **kwargs):
    seen.extend(texts)
    raise Stop

  monkeypatch.setattr(tokenizer, "train", spy)
  c = tiny_config()
  c.data.update(source=str(docs), holdout_every=3)
  with pytest.raises(Stop):
    clm.run(c, str(tmp_path / "run"))
  assert seen == ["a slow film", "no film at all"]  # was 2,402 texts: 2,400 of boilerplate


def test_a_held_out_split_too_small_for_a_batch_names_the_file_and_counts():
  d = common.preference_data(source="pairs.jsonl", batch_size=8, holdout_every=20)
  stats = {"records": 3, "examples": 3}
  with pytest.raises(DataError, match=r"config.data.source='pairs.jsonl': the validation split "
                                      r"has 3 example\(s\) \(3 record\(s\) read\), fewer than "
                                      r"config.data.batch_size=8.*holdout_every \(now 20\)"):
    summary.check_heldout_batch(stats, d, holdout="pairs.jsonl")
  summary.check_heldout_batch({"records": 9, "examples": 8}, d, holdout=None)  # one batch: fine


def test_one_folder_of_a_hub_snapshot(tmp_path, monkeypatch):
  repo = tmp_path / "hub" / "datasets--openai--gsm8k"
  snapshot = repo / "snapshots" / "abc"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("abc")
  gsm = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(4)]
  for config in ("main", "socratic"):
    jsonl(snapshot / config / "train.jsonl", gsm)
    jsonl(snapshot / config / "test.jsonl", gsm[:2])
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  main = preferences.prompt_records(data("hf:openai/gsm8k/main"), "validation")
  assert [r["answer"] for r in main] == ["0", "1"]  # one config, not main and socratic merged
  with pytest.raises(DataError, match=r"has no folder 'other'; its folders: \['main', "
                                      r"'socratic'\]"):
    preferences.prompt_records(data("hf:openai/gsm8k/other"), "train")
