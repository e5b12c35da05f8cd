"""Hugging Face checkpoints: import, export, tokenizers and chat templates.

The fixtures (tests/fixtures/hf/, made by tests/fixtures/make_hf_fixtures.py
with transformers) are tiny random checkpoints of each family with what
transformers computed on them: logits, greedy generate, tokenizer encodings,
chat-template renderings. transformers itself is not needed here; the last
test also loads an export in transformers when it is installed.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import convert, runs, sampling
from research.data import hf_tokenizer, templates
from research.models import config as model_config
from research.models.hf import checkpoint as hf_checkpoint
from research.models.hf.families import CheckpointError, Tensor
from research.training import partitioning

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
FAMILIES = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2", "mistral", "phi3",
            "gpt2"]
# Fixtures with sliding-window layers, windows of 4-6 tokens: their 11-token logits
# and greedy continuations run past the window.
WINDOWED = ["qwen2", "gemma2", "gemma3", "mistral", "phi3"]


def expected(name):
  with open(os.path.join(FIXTURES, name, "expected.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("imported")
  return {name: convert.import_hf(os.path.join(FIXTURES, name), str(root / name))["workdir"]
          for name in FAMILIES}


def logits_of(workdir, ids):
  model, params = runs.load_policy(workdir)
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids)))


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(imported, name):
  want = expected(name)
  got = logits_of(imported[name], want["input_ids"])
  np.testing.assert_allclose(got, np.asarray(want["logits"]), atol=1e-4, rtol=0)
  model, params = runs.load_policy(imported[name])  # the closed-form count, per family
  assert model.cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", FAMILIES)
def test_kv_cache_greedy_matches_transformers_generate(imported, name):
  want = expected(name)
  mesh, rules = partitioning.mesh_and_rules(runs.load_config(imported[name]))
  model, params = runs.load_policy(imported[name], mesh, rules)
  sampler = sampling.Sampler(model, eos_id=tuple(want["eos_ids"]), pad_id=0, mesh=mesh,
                             rules=rules)
  out = jax.device_get(sampler(params, want["prompts"], jax.random.PRNGKey(0),
                               sampling.SamplingConfig(12, greedy=True)))
  for row, reference in enumerate(want["greedy"]):
    n = int(out.lengths[row])
    assert out.tokens[row, :n].tolist() == reference[:n]
    assert n == len(reference) or reference[n - 1] in want["eos_ids"]


@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trips_bit_exactly(imported, name, tmp_path):
  out = tmp_path / "hf"
  convert.export_hf(imported[name], str(out))
  source = hf_checkpoint.SafetensorsDir(os.path.join(FIXTURES, name))
  exported = hf_checkpoint.SafetensorsDir(str(out))
  for key in source.files:  # the same tensors, names and values as transformers saved
    assert np.array_equal(exported.read(key), source.read(key)), key
  assert set(exported.files) == set(source.files)
  with open(out / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  with open(os.path.join(FIXTURES, name, "config.json"), encoding="utf-8") as f:
    original = json.load(f)
  for key in ("architectures", "model_type", "vocab_size", "tie_word_embeddings", "hidden_size",
              "n_embd", "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
              "sliding_window", "layer_types", "use_sliding_window", "query_pre_attn_scalar",
              "attn_logit_softcapping", "final_logit_softcapping", "attention_bias"):
    if key in original and (key != "sliding_window" or original.get("layer_types") or
                            name in ("mistral", "phi3")):
      assert config[key] == original[key], key
  if name in ("gemma3", "qwen2", "gemma2"):  # per-layer RoPE and window layouts
    assert config["rope_parameters"] == original["rope_parameters"]
  again = convert.import_hf(str(out), str(tmp_path / "again"))["workdir"]
  first = runs.load_policy(imported[name])[1]
  second = runs.load_policy(again)[1]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               first, second)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma2", "gemma3", "olmo2", "phi3"])
def test_scanned_import_on_an_8_device_mesh_matches(devices, tmp_path, name):
  workdir = convert.import_hf(os.path.join(FIXTURES, name), str(tmp_path / "scan"),
                              scan_layers=True, fsdp=2, tensor=2)["workdir"]
  config = runs.load_config(workdir)
  assert dict(config.mesh)["fsdp"] == 2
  mesh, rules = partitioning.mesh_and_rules(config)
  model, params = runs.load_policy(workdir, mesh, rules)
  kernel = params["layers"]["attention"]["query"]["kernel"]
  assert kernel.shape[0] == model.cfg.num_layers and len(kernel.sharding.device_set) == 8
  want = expected(name)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(want["input_ids"])))
  np.testing.assert_allclose(got, np.asarray(want["logits"]), atol=1e-4, rtol=0)


def test_a_shard_is_read_as_one_block_of_its_tensor(tmp_path):
  """A device's shard is read alone (on several hosts each process reads only its
  own): equal to the whole tensor converted, then indexed."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  tensors = {"q": rng.normal(size=(12, 8)), "qkv": rng.normal(size=(20, 8)),
             "c": rng.normal(size=(8, 12)), "v": rng.normal(size=(12,)),
             "t": rng.normal(size=(10, 8))}
  save_file({k: v.astype(np.float32) for k, v in tensors.items()},
            str(tmp_path / "model.safetensors"))
  source = hf_checkpoint.SafetensorsDir(str(tmp_path))
  whole = slice(None)
  cases = [(Tensor("q", "linear"), (8, 3, 4), (slice(0, 4), whole, whole)),  # fsdp rows
           (Tensor("q", "linear"), (8, 3, 4), (whole, slice(1, 3), whole)),  # tensor: heads
           (Tensor("qkv", "linear", part=1, parts=3, sizes=(12, 4, 4)), (8, 1, 4),
            (slice(4, 8), whole, whole)),                                     # Phi-3's fused k
           (Tensor("qkv", "linear", part=2, parts=3, sizes=(12, 4, 4)), (8, 1, 4),
            (whole, whole, whole)),
           (Tensor("c", "conv1d"), (8, 3, 4), (whole, slice(2, 3), whole)),   # GPT-2's layout
           (Tensor("v", "vector"), (3, 4), (slice(1, 2), whole)),
           (Tensor("t", "table"), (10, 8), (slice(5, 10), slice(0, 4)))]
  for spec, shape, index in cases:
    block = hf_checkpoint.read_shard(source, spec.name, spec, shape, index)
    want = hf_checkpoint.to_ours(spec, tensors[spec.name].astype(np.float32), shape)[index]
    assert block is not None, (spec, index)
    np.testing.assert_array_equal(block, want)
  # Part of every head is not one block of the [out, in] tensor: read whole instead.
  assert hf_checkpoint.read_shard(source, "q", Tensor("q", "linear"), (8, 3, 4),
                                  (whole, whole, slice(0, 2))) is None


def test_dry_run_reports_sizes_without_writing(tmp_path):
  out = convert.import_hf(os.path.join(FIXTURES, "qwen2"), str(tmp_path / "x"), dry_run=True)
  assert out["parameters"] == 42272 and out["param_gib_per_device"] > 0
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_matches_transformers(name):
  want = expected(name)
  tok = hf_tokenizer.HFTokenizer.load(os.path.join(FIXTURES, name))
  for text, ids in want["encodings"].items():
    assert tok.encode(text) == ids, text
  for text, ids in want["with_special"].items():
    assert tok.prefix_ids + tok.encode(text) == ids, text
  for text, decoded in zip(want["encodings"], want["decoded"]):
    assert tok.decode(tok.encode(text)) == decoded
  for chat in want["chats"]:
    if "error" in chat and tok.chat_template:
      with pytest.raises(hf_tokenizer.TokenizerError):
        tok.render_chat(chat["messages"])
    elif "error" not in chat:
      assert tok.render_chat(chat["messages"]) == chat["text"]
      assert tok.render_chat(chat["messages"][:-1], add_generation_prompt=True) == chat["prompt"]


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo2",
                                  "mistral", "phi3"])
def test_hf_chat_loss_mask_covers_exactly_the_replies(name):
  tok = hf_tokenizer.HFTokenizer.load(os.path.join(FIXTURES, name))
  messages = expected(name)["chats"][1]["messages"]
  ids, mask = templates.tokenize({"messages": messages}, "hf_chat", tok)
  # Runs of masked tokens are the assistant turns, each closed by the end-of-turn token.
  runs, current = [], []
  for i, m in zip(ids, mask):
    if m:
      current.append(int(i))
    elif current:
      runs.append(current)
      current = []
  runs += [current] if current else []
  replies = [m["content"] for m in messages if m["role"] == "assistant"]
  assert len(runs) == len(replies)
  end = tok.turn_end_ids()
  for run, reply in zip(runs, replies):
    assert run[-len(end):] == end
    assert tok.decode(run).strip() == reply
  # The prompt for the last reply is exactly the tokens before it in training.
  prompt, answer = templates.generation_prompt({"messages": messages}, "hf_chat", tok)
  last_start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
  assert answer.strip() == replies[-1]
  assert list(ids[:last_start]) == prompt


def test_reward_model_exports_and_reimports(tiny_base, tmp_path):
  from research.models.heads import ScalarModel  # pylint: disable=g-import-not-at-top
  # A reward-model workdir: the CLM trunk with a fresh head, stage 'reward'.
  config = runs.load_config(tiny_base)
  mesh, rules = partitioning.mesh_and_rules(config)
  cfg = model_config.from_config(config.model)
  model = ScalarModel(cfg)
  params = model.init(jax.random.PRNGKey(1), jnp.ones((1, 8), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  params["head"]["bias"] = jnp.float32(0.25)
  rm = tmp_path / "rm"
  from research.training import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(str(rm / "checkpoints"))
  ckpt.save(0, {"params": params}, {})
  ckpt.close()
  config.stage = "reward"
  runs.resolve(config)
  runs.save_config(config, str(rm))
  shutil.copy(os.path.join(tiny_base, runs.TOKENIZER_FILE), rm / runs.TOKENIZER_FILE)
  convert.export_hf(str(rm), str(tmp_path / "hf"))
  with open(tmp_path / "hf" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["LlamaForSequenceClassification"]
  back = convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))["workdir"]
  assert runs.load_config(back).stage == "reward"
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, cfg.vocab_size, (2, 9)))
  again = runs.load_params(back, ScalarModel(model_config.from_config(runs.load_config(back).model)),
                             mesh, rules)
  want = model.apply({"params": params}, tokens)[1]
  got = ScalarModel(model_config.from_config(runs.load_config(back).model)).apply(
      {"params": again}, tokens)[1]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_native_run_exports_as_llama_with_the_same_logits(tiny_base, tmp_path):
  convert.export_hf(tiny_base, str(tmp_path / "hf"))
  assert (tmp_path / "hf" / "tokenizer.json").exists()
  with open(tmp_path / "hf" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["model_type"] == "llama"
  back = convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))["workdir"]
  ids = np.random.default_rng(0).integers(4, 1024, (2, 10))
  np.testing.assert_allclose(logits_of(back, ids), logits_of(tiny_base, ids), atol=1e-4)
  # The exported tokenizer reads back with the same ids as ours.
  ours = runs.load_tokenizer(os.path.join(tiny_base, runs.TOKENIZER_FILE))
  theirs = runs.load_tokenizer(os.path.join(back, hf_tokenizer.DIRNAME))
  for text in VARIED_TEXTS:
    assert theirs.encode(text) == ours.encode(text), text
  assert theirs.prefix_ids == ours.prefix_ids


# Whitespace runs, leading/trailing spaces, tabs, newlines, accents, emoji, CJK,
# digits, role markers and control tokens written as text.
VARIED_TEXTS = [
    "A great film, 10/10 <|assistant|> would watch again.", "  leading and trailing  ",
    "runs   of    spaces", "tabs\there\tand\nnewlines\n\nok", "Café naïve résumé Ærø straße",
    "emoji 😀🎬 👍🏽", "日本語 中文 русский ελληνικά", "digits 1234567890 3.14159 -42",
    "<s> literal </s> and <pad> <unk>", "<|user|>hi<|assistant|>", "<|user|>\nIs it good?",
    "", " ", "\t", "x", "end with space ", "The movie was great.",
]


@pytest.mark.parametrize("model_type,byte_fallback", [("bpe", False), ("bpe", True),
                                                      ("unigram", False), ("unigram", True)])
def test_sentencepiece_as_tokenizer_json_reads_alike(model_type, byte_fallback):
  """Our sentencepiece models as tokenizer.json (research/data/sentencepiece_hf.py):
  the same ids as sentencepiece on every varied text, read with `tokenizers`."""
  from research.data import corpus, sentencepiece_hf, tokenizer  # pylint: disable=g-import-not-at-top
  texts = [r.text for r in corpus.reviews(0, 300)] + VARIED_TEXTS * 3
  sp = tokenizer.train(texts, 400, model_type=model_type, byte_fallback=byte_fallback)
  files = {"tokenizer.json": sentencepiece_hf.tokenizer_json(sp.model_proto).encode(),
           "tokenizer_config.json": sentencepiece_hf.dumps(
               sentencepiece_hf.tokenizer_config(sp.model_proto)).encode()}
  hf = hf_tokenizer.HFTokenizer(files)
  try:
    lt_is_a_piece = sp.piece_id("<") >= 0
  except KeyError:
    lt_is_a_piece = False
  # The one case a Unigram lattice reads differently (sentencepiece_hf.py).
  texts = [t for t in VARIED_TEXTS
           if not (model_type == "unigram" and "<s>" in t and not lt_is_a_piece)]
  for text in texts:
    assert hf.encode(text) == sp.encode(text), text
  assert hf.prefix_ids == sp.prefix_ids and hf.eos_id == sp.eos_id and hf.pad_id == sp.pad_id
  readable = [t for t in texts if byte_fallback or sp.unk_id not in sp.encode(t)]
  for text in readable:  # decoding gives sentencepiece's text back
    assert hf.decode(hf.encode(text)) == sp.decode(sp.encode(text)), text


def _copy_fixture(tmp_path, name="llama"):
  target = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), target)
  return target


def test_bad_checkpoints_fail_with_one_clear_line(tmp_path):
  with pytest.raises(CheckpointError, match="not a directory"):
    convert.import_hf(str(tmp_path / "nope"), str(tmp_path / "out"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no config.json"):
    convert.import_hf(str(tmp_path / "empty"), str(tmp_path / "out"))

  bad = _copy_fixture(tmp_path / "arch")
  config = json.loads((bad / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps({**config, "architectures": ["T5ForConditionalGeneration"]}))
  with pytest.raises(CheckpointError, match="unsupported architecture.*T5ForConditionalGeneration"):
    convert.import_hf(str(bad), str(tmp_path / "out"))

  shape = _copy_fixture(tmp_path / "shape")
  (shape / "config.json").write_text(json.dumps({**config, "intermediate_size": 90}))
  with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.mlp"
                                            r".\w+_proj.weight' has shape .*expected .*90"):
    convert.import_hf(str(shape), str(tmp_path / "out"))

  shards = _copy_fixture(tmp_path / "shards")
  os.remove(shards / "model.safetensors")
  (shards / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
  with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors, which is missing"):
    convert.import_hf(str(shards), str(tmp_path / "out"))

  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text(json.dumps(config))
  (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(CheckpointError, match="torch pickles are not read"):
    convert.import_hf(str(tmp_path / "bin"), str(tmp_path / "out"))


def test_sharded_export_is_read_back(imported, tmp_path):
  from research.models.hf import families  # pylint: disable=g-import-not-at-top
  cfg = runs.load_policy(imported["gemma"])[0].cfg
  params = runs.load_policy(imported["gemma"])[1]
  files = hf_checkpoint.save_tensors(
      str(tmp_path), lambda: hf_checkpoint.hf_tensors(params, families.tensor_map(cfg)),
      max_shard_bytes=40_000)
  assert len(files) > 1 and (tmp_path / hf_checkpoint.INDEX_FILE).exists()
  source = hf_checkpoint.SafetensorsDir(os.path.join(FIXTURES, "gemma"))
  sharded = hf_checkpoint.SafetensorsDir(str(tmp_path))
  assert set(sharded.files) == set(source.files)
  for key in source.files:
    assert np.array_equal(sharded.read(key), source.read(key))


@pytest.mark.skipif(not __import__("importlib").util.find_spec("transformers"),
                    reason="transformers not installed (optional: a live cross-check)")
@pytest.mark.parametrize("name", FAMILIES)
def test_export_loads_in_transformers_with_identical_logits(imported, name, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  convert.export_hf(imported[name], str(tmp_path / "hf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  want = expected(name)
  with torch.no_grad():
    logits = model(torch.tensor(want["input_ids"])).logits.numpy()
  np.testing.assert_allclose(logits, np.asarray(want["logits"]), atol=1e-4, rtol=0)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("transformers"),
                    reason="transformers not installed (optional: a live cross-check)")
def test_native_run_and_reward_model_load_in_transformers(tiny_base, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from research.models.heads import ScalarModel  # pylint: disable=g-import-not-at-top
  from research.training import checkpoint  # pylint: disable=g-import-not-at-top
  convert.export_hf(tiny_base, str(tmp_path / "lm"))
  ids = np.random.default_rng(0).integers(4, 1024, (2, 10))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm")).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(theirs, logits_of(tiny_base, ids), atol=1e-4)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
  ours = runs.load_tokenizer(os.path.join(tiny_base, runs.TOKENIZER_FILE))
  for text in VARIED_TEXTS:  # transformers' ids are ours, with and without BOS
    assert tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
    assert tok(text)["input_ids"] == ours.prefix_ids + ours.encode(text), text

  # A reward model: transformers' score is ours minus the head's bias.
  config = runs.load_config(tiny_base)
  cfg = model_config.from_config(config.model)
  rm = ScalarModel(cfg)
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                        rm.init(jax.random.PRNGKey(1), jnp.ones((1, 8), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "value"))
  params["head"]["bias"] = jnp.float32(0.25)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "rm" / "checkpoints"))
  ckpt.save(0, {"params": params}, {})
  ckpt.close()
  config.stage = "reward"
  runs.resolve(config)
  runs.save_config(config, str(tmp_path / "rm"))
  shutil.copy(os.path.join(tiny_base, runs.TOKENIZER_FILE),
              tmp_path / "rm" / runs.TOKENIZER_FILE)
  convert.export_hf(str(tmp_path / "rm"), str(tmp_path / "rm_hf"))
  hf_rm = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path / "rm_hf")).eval()
  with torch.no_grad():
    hf_scores = hf_rm(torch.tensor(ids)).logits[:, 0].numpy()
  np.testing.assert_allclose(hf_scores + 0.25, np.asarray(rm.apply({"params": params},
                                                                   jnp.asarray(ids))[1]),
                             atol=1e-4)


def test_logit_softcap_and_llama3_rope_frequencies_match_their_formulas():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from research.models import config as model_config  # pylint: disable=g-import-not-at-top
  from research.models.decoder import Decoder, rope_frequencies  # pylint: disable=g-import-not-at-top
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 7)))
  params = Decoder(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
  plain = np.asarray(Decoder(cfg).apply({"params": params}, tokens))
  capped = Decoder(dataclasses.replace(cfg, logit_softcap=2.0)).apply({"params": params}, tokens)
  np.testing.assert_allclose(np.asarray(capped), 2.0 * np.tanh(plain / 2.0), atol=1e-6)

  # Llama 3.1 scaling (transformers' _compute_llama3_parameters), written plainly.
  c = dataclasses.replace(cfg, head_dim=64, rope_theta=500000.0, rope_scaling="llama3",
                          rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                          rope_original_max_len=8192)
  inv = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
  want = []
  for f in inv:
    wavelen = 2 * np.pi / f
    if wavelen < 8192 / 4.0:
      want.append(f)
    elif wavelen > 8192 / 1.0:
      want.append(f / 8.0)
    else:
      smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
      want.append((1 - smooth) * f / 8.0 + smooth * f)
  np.testing.assert_allclose(np.asarray(rope_frequencies(c)), np.asarray(want), rtol=1e-5)


def test_import_refuses_a_workdir_that_holds_anything(tmp_path):
  """Importing over a run used to rewrite its config.json and delete its checkpoints;
  now nothing is read or written."""
  from research.errors import ConfigError  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  (run / "checkpoints" / "300").mkdir(parents=True)
  (run / "config.json").write_text('{"stage": "clm"}')
  with pytest.raises(ConfigError, match="is not empty .*checkpoints, config.json"):
    convert.import_hf(os.path.join(FIXTURES, "qwen2"), str(run))
  assert sorted(os.listdir(run)) == ["checkpoints", "config.json"]
  assert (run / "config.json").read_text() == '{"stage": "clm"}'
  assert os.listdir(run / "checkpoints") == ["300"]


def test_a_truncated_single_file_checkpoint_is_named(tmp_path):
  from research.models.hf.families import CheckpointError  # pylint: disable=g-import-not-at-top
  broken = tmp_path / "broken"
  shutil.copytree(os.path.join(FIXTURES, "qwen2"), broken)
  weights = broken / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:100])
  with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
    convert.import_hf(str(broken), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_a_truncated_tokenizer_json_is_named(tmp_path):
  broken = tmp_path / "tok"
  shutil.copytree(os.path.join(FIXTURES, "qwen2"), broken)
  text = (broken / "tokenizer.json").read_text(encoding="utf-8")
  (broken / "tokenizer.json").write_text(text[:len(text) // 2], encoding="utf-8")
  with pytest.raises(hf_tokenizer.TokenizerError, match=r"tok/tokenizer.json: not a readable"):
    hf_tokenizer.HFTokenizer.load(str(broken))


@pytest.mark.parametrize("name,key,value", [
    ("gpt2", "scale_attn_by_inverse_layer_idx", True),  # was ignored: logits off by 4.9
    ("gpt2", "scale_attn_weights", False),
    ("llama", "attn_logit_softcapping", 50.0),
    ("gemma", "final_logit_softcapping", 30.0),
    ("qwen3", "attn_logit_softcapping", 50.0),
    ("gemma2", "use_bidirectional_attention", True),
])
def test_a_config_key_that_changes_the_computation_is_refused_by_name(tmp_path, name, key, value):
  from research.models.hf.families import CheckpointError  # pylint: disable=g-import-not-at-top
  source = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), source)
  config = json.loads((source / "config.json").read_text())
  config[key] = value
  (source / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=f"{key}={value!r} changes what a {name} model"):
    convert.import_hf(str(source), str(tmp_path / "out"))
  config[key] = None if name != "gpt2" else not value  # the supported value imports
  (source / "config.json").write_text(json.dumps(config))
  assert convert.import_hf(str(source), str(tmp_path / "ok"), dry_run=True)["parameters"] > 0


def test_a_sentencepiece_config_without_legacy_reads_as_transformers_5_does():
  """transformers >= 5 reads a missing `legacy` as False (only the text's first piece
  gets the dummy-prefix space); this read it as True (3 of 20 strings differed)."""
  from research.data import corpus, tokenizer  # pylint: disable=g-import-not-at-top
  sp = tokenizer.train([r.text for r in corpus.reviews(0, 300, "train")], 300)
  load = lambda config: hf_tokenizer.HFTokenizer(
      {"tokenizer.model": sp.model_proto, "tokenizer_config.json": json.dumps(
          {"bos_token": "<s>", "eos_token": "</s>", **config}).encode()})
  missing, new, old = load({}), load({"legacy": False}), load({"legacy": True})
  texts = ["hello there", " a leading space", "two  spaces", "The film<s> again", " "]
  assert [missing.encode(t) for t in texts] == [new.encode(t) for t in texts]
  assert [missing.encode(t) for t in texts] != [old.encode(t) for t in texts]


def _fields(name, **changes):
  from research.models.hf import families  # pylint: disable=g-import-not-at-top
  config = {**json.loads(open(os.path.join(FIXTURES, name, "config.json"), encoding="utf-8").read()),
            **changes}
  return families.decoder_fields({k: v for k, v in config.items() if v != "DROP"}, "config.json")


def test_windows_follow_each_familys_rule_without_layer_types():
  """Configs written before transformers 5 carry no `layer_types`: each family's
  own rule (Gemma 2 alternates from a local layer 0, Gemma 3 has a global layer
  every `sliding_window_pattern`-th, Qwen2/3 window the layers from
  `max_window_layers` on, Mistral and Phi-3 every layer)."""
  assert _fields("gemma2", layer_types="DROP", num_hidden_layers=4)["attention_pattern"] == "lglg"
  gemma3 = _fields("gemma3", layer_types="DROP", num_hidden_layers=7, sliding_window_pattern=3)
  assert gemma3["attention_pattern"] == "llgllgl" and gemma3["sliding_window"] == 5
  qwen2 = _fields("qwen2", layer_types="DROP", num_hidden_layers=3, max_window_layers=2)
  assert qwen2["attention_pattern"] == "ggl"
  assert _fields("qwen2", use_sliding_window=False)["sliding_window"] == 0
  assert _fields("mistral")["attention_pattern"] == "ll"
  assert _fields("phi3")["sliding_window"] == 6
  assert _fields("llama", sliding_window=4)["sliding_window"] == 0  # Llama has no window
  # Gemma 3 configs of transformers 4: rope_theta, rope_local_base_freq, rope_scaling.
  old = _fields("gemma3", rope_parameters="DROP", rope_theta=1e6, rope_local_base_freq=1e4,
                rope_scaling={"rope_type": "linear", "factor": 8.0})
  assert (old["rope_theta"], old["rope_local_theta"], old["rope_factor"]) == (1e6, 1e4, 8.0)


@pytest.mark.parametrize("changes,match", [
    ({"architectures": ["Qwen3MoeForCausalLM"]}, "mixture-of-experts models are not supported"),
    ({"architectures": ["Gemma3ForConditionalGeneration"]}, "multimodal checkpoint"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor=0.5 is not implemented"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope type 'longrope'"),
    ({"layer_types": ["chunked_attention", "full_attention"], "sliding_window": 4},
     "layer_types .*chunked_attention.* is not implemented"),
])
def test_what_the_decoder_cannot_compute_is_refused_by_name(changes, match):
  name = "gemma2" if "layer_types" in changes else "phi3"
  with pytest.raises(CheckpointError, match=match):
    _fields(name, **changes)


@pytest.mark.parametrize("family,changes,match", [
    ("llama", dict(qk_norm="head"), "model.qk_norm='head' .*has 'none'"),
    ("llama", dict(sliding_window=4), "model.sliding_window=4"),
    ("mistral", dict(sliding_window=4, attention_pattern="lg"), "model.attention_pattern='lg'"),
    ("gemma2", dict(norm_placement="pre"), "model.norm_placement='pre'"),
])
def test_export_refuses_what_the_family_cannot_express(family, changes, match):
  from research.models.hf import families  # pylint: disable=g-import-not-at-top
  cfg = model_config.DecoderConfig(**{**model_config.defaults(), **_fields(family), **changes})
  with pytest.raises(CheckpointError, match=match):
    families.check_exportable(cfg)
  families.check_exportable(model_config.DecoderConfig(**{**model_config.defaults(),
                                                          **_fields(family)}))
