import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import sft as sft_config
from research.data import corpus, instructions, sft, templates, tokenizer
from research.errors import DataError
from research.models import config as model_config
from research.models.decoder import Decoder
from research.objectives import clm


@pytest.fixture(scope="module")
def tok():
  texts = [r.text for r in corpus.reviews(0, 1500)]
  return tokenizer.train(itertools.chain(texts, instructions.boilerplate()), 1024)


def masked_text(tok, example):
  """The target text the loss sees, segment by segment (split at EOS)."""
  targets = example["targets"][example["loss_mask"].astype(bool)]
  return [tok.decode(list(s)) for s in np.split(targets, np.where(targets == tok.eos_id)[0] + 1)
          if len(s)]


def test_alpaca_loss_mask_by_hand(tok):
  record = {"instruction": "Say hi.", "input": "", "output": "hi there"}
  data = sft.build([record], tok, "alpaca", seq_len=128)
  ex = data.examples[0]
  prompt = tok.encode(templates.ALPACA_PROMPT.format(instruction="Say hi."))
  response = tok.encode("hi there")
  ids = [tok.bos_id] + prompt + response + [tok.eos_id]
  np.testing.assert_array_equal(ex["inputs"], ids[:-1])
  np.testing.assert_array_equal(ex["targets"], ids[1:])
  # Targets in the loss: the response tokens and the EOS, nothing else.
  want_mask = [0] * len(prompt) + [1] * (len(response) + 1)
  np.testing.assert_array_equal(ex["loss_mask"], want_mask)
  assert masked_text(tok, ex) == ["hi there"]
  assert tok.eos_id in ex["targets"][ex["loss_mask"] == 1]


def test_chat_mask_covers_every_assistant_turn_only(tok):
  record = {"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Is it good?"}, {"role": "assistant", "content": "yes"},
      {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "the acting"}]}
  ex = sft.build([record], tok, "chat", seq_len=128).examples[0]
  assert masked_text(tok, ex) == ["yes", "the acting"]
  assistant_id = tok.piece_id("<|assistant|>")
  user_id = tok.piece_id("<|user|>")
  masked = ex["targets"][ex["loss_mask"] == 1]
  assert assistant_id not in masked and user_id not in masked
  assert (ex["targets"] == assistant_id).sum() == 2  # role markers are single tokens


def test_alpaca_records_render_as_chat(tok):
  record = {"instruction": "Rate it.", "input": "Great film.", "output": "positive"}
  chat = templates.as_template(record, "chat")
  assert chat["messages"][0] == {"role": "user", "content": "Rate it.\n\nGreat film."}
  ex = sft.build([record], tok, "chat", seq_len=64).examples[0]
  assert masked_text(tok, ex) == ["positive"]


def test_truncation_cuts_the_prompt_from_the_left_and_counts(tok):
  long_input = " ".join(["the plot"] * 200)
  records = [{"instruction": "Summarize.", "input": long_input, "output": "a short answer"},
             {"instruction": "Echo.", "input": "", "output": " ".join(["word"] * 200)},
             {"instruction": "Fine.", "input": "", "output": "ok"}]
  data = sft.build(records, tok, "alpaca", seq_len=64)
  # The long prompt is cut; the long response cannot fit and is dropped.
  assert data.stats["truncated"] == 1 and data.stats["dropped"] == 1
  assert data.stats["examples"] == 2
  ex = data.examples[0]
  assert len(ex["inputs"]) == 64 and ex["inputs"][0] == tok.bos_id
  assert masked_text(tok, ex) == ["a short answer"]  # the response survives whole


def test_packed_examples_match_unpacked_logits(tok):
  records = instructions.embedded(ml_collections.ConfigDict(
      {"corpus_seed": 0, "corpus_size": 60}), "train")[:12]
  data = sft.build(records, tok, "alpaca", seq_len=512)
  batch = next(iter(sft.batches(data, seq_len=512, global_batch_size=2, seed=0, train=False)))
  assert batch["segment_ids"].max() >= 2  # several examples share a row
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  packed = model.apply({"params": params}, batch["inputs"], batch["positions"],
                       batch["segment_ids"])
  # Each example alone, right-padded to the row length (causal: padding after a
  # token cannot change its logits), so one compiled forward serves them all.
  alone_fn = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  checked = 0
  for row in range(2):
    for seg in range(1, batch["segment_ids"][row].max() + 1):
      where = np.where(batch["segment_ids"][row] == seg)[0]
      padded = np.zeros((1, batch["inputs"].shape[1]), np.int32)
      padded[0, :len(where)] = batch["inputs"][row, where]
      alone = alone_fn(padded)[0, :len(where)]
      np.testing.assert_allclose(packed[row, where], alone, atol=1e-5)
      assert (batch["positions"][row, where] == np.arange(len(where))).all()
      checked += 1
  assert checked >= 3


def test_prompt_targets_do_not_change_the_gradient(tok):
  records = instructions.embedded(ml_collections.ConfigDict(
      {"corpus_seed": 0, "corpus_size": 40}), "train")[:6]
  data = sft.build(records, tok, "alpaca", seq_len=256)
  batch = next(iter(sft.batches(data, seq_len=256, global_batch_size=2, seed=0, train=False)))
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), jnp.ones((1, 4), jnp.int32))["params"])
  config = ml_collections.ConfigDict({"objective": {"z_loss": 0.0}})
  grad = jax.jit(jax.grad(lambda p, b: clm.loss_fn(p, b, None, model=model, config=config)[0]))
  changed = dict(batch)
  prompt = batch["loss_mask"] == 0
  changed["targets"] = np.where(prompt, np.random.default_rng(0).integers(4, 1024, prompt.shape),
                                batch["targets"]).astype(np.int32)
  assert (changed["targets"] != batch["targets"]).any()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               grad(params, batch), grad(params, changed))


def test_jsonl_layout_errors_name_file_line_and_fields(tmp_path):
  cfg = sft_config.get_config("tiny").data
  path = tmp_path / "sft.jsonl"
  path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n"
                  + json.dumps({"query": "a", "reply": "b"}) + "\n")
  cfg.source = str(path)
  with pytest.raises(DataError, match=r"sft\.jsonl:2: unknown SFT layout .*'query', "
                                      r"'reply'.*\{instruction, input \(optional\), output\}"):
    instructions.instruction_records(cfg, "train")
  path.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
  with pytest.raises(DataError, match=r"sft\.jsonl:1: messages\[0\] is dict .* a message needs "
                                      r"'role' in \['system', 'user', 'assistant'\]"):
    instructions.instruction_records(cfg, "train")
  path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
  with pytest.raises(DataError, match=r"sft\.jsonl:2: malformed JSON"):
    instructions.instruction_records(cfg, "train")


def test_tfds_classification_as_instructions():
  cfg = sft_config.get_config("tiny").data
  cfg.source = "tfds:imdb_reviews"
  cfg.field_map.update(sft_config.IMDB_SENTIMENT)
  cfg.label_names = sft_config.IMDB_LABELS
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    records = instructions.instruction_records(cfg, "train")
  assert len(records) == 6
  assert {r["output"] for r in records} <= {"negative", "positive"}
  assert records[0]["instruction"] == "Is this movie review positive or negative?"


def test_embedded_tasks_cover_both_splits():
  cfg = ml_collections.ConfigDict({"corpus_seed": 0, "corpus_size": 400, "source": "embedded"})
  for split in ("train", "validation"):
    tasks = {r["task"] for r in instructions.instruction_records(cfg, split)}
    assert tasks == set(instructions.TASKS)
  review = corpus.make_review(0, 5)
  summary = instructions.summary(review)
  assert review.title in summary and summary.startswith("The reviewer")


def test_tiny_sft_follows_the_format_and_learns_the_task(tiny_sft_run):
  """End to end: the fine-tuned model answers in the template's format.

  Thresholds (tiny model, 600 steps, sequence-normalised loss, all 38 held-out
  sentiment questions): answers closed with EOS >= 0.95; the answer is exactly
  'positive'/'negative' >= 0.9 of the time (base: <= 0.1); sentiment exact
  match >= 0.7 (a well-formatted coin flip reaches 27/38 with p < 0.01; seen:
  0.84; base: 0); held-out response loss (token mean) falls by > 0.8 nats.
  Title extraction stays out of reach at this size.
  """
  workdir, summary = tiny_sft_run
  base, tuned = summary["generate"]["base"], summary["generate"]["tuned"]
  assert tuned["ends_with_eos"] >= 0.95
  assert tuned["valid/sentiment"] >= 0.9 and base["valid/sentiment"] <= 0.1
  assert tuned["exact_match/sentiment"] >= 0.7 and base["exact_match"] == 0.0
  assert summary["eval_at_start"]["nll"] - summary["eval"]["nll"] > 0.8
  assert summary["compilations"] == 1
  assert os.path.exists(os.path.join(workdir, "samples.jsonl"))
