import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import reward as reward_config
from research.data import comparisons, corpus, instructions, preferences, scorer, tokenizer
from research.errors import DataError
from research.models import config as model_config
from research.models.heads import ScalarModel, last_token_index
from research.objectives import reward
from research.stages import reward as reward_stage
from tests import tfds_builders


def numpy_ranking_loss(scores, ranks, margin=0.0, margin_b=None, center=0.0):
  """InstructGPT eq. 1 written out: per prompt, mean over ordered pairs; then mean."""
  per_prompt = []
  for b in range(len(scores)):
    m = margin + (0.0 if margin_b is None else margin_b[b])
    losses = [np.log1p(np.exp(-(scores[b][i] - scores[b][j] - m)))
              for i in range(len(ranks[b])) for j in range(len(ranks[b]))
              if ranks[b][i] >= 0 and ranks[b][j] >= 0 and ranks[b][i] < ranks[b][j]]
    if losses:
      valid = [scores[b][k] for k in range(len(ranks[b])) if ranks[b][k] >= 0]
      per_prompt.append(np.mean(losses) + center * sum(valid) ** 2)
  return np.mean(per_prompt)


def test_ranking_loss_matches_numpy_with_ties_gaps_margins_and_centring():
  rng = np.random.default_rng(0)
  scores = rng.normal(0, 2, (5, 4))
  ranks = np.array([[0, 1, 2, 3], [1, 0, 1, 2], [0, 0, 0, 0], [2, -1, 0, 1], [0, 1, -1, -1]])
  margin_b = rng.uniform(0, 1, 5)
  loss, metrics = reward.ranking_loss(jnp.asarray(scores, jnp.float32), jnp.asarray(ranks),
                                      margin=0.3, margin_B=jnp.asarray(margin_b), center_coef=0.01)
  want = numpy_ranking_loss(scores, ranks, 0.3, margin_b, 0.01)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Ordered pairs: 6 + 5 (the tie is skipped) + 0 (all tied) + 3 + 1.
  assert int(metrics["num_pairs"]) == 15 and int(metrics["num_examples"]) == 4
  pairs = [(b, i, j) for b in range(5) for i in range(4) for j in range(4)
           if ranks[b][i] >= 0 and ranks[b][j] >= 0 and ranks[b][i] < ranks[b][j]]
  diffs = np.array([scores[b][i] - scores[b][j] for b, i, j in pairs])
  np.testing.assert_allclose(metrics["accuracy"], (diffs > 0).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["margin_mean"], diffs.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["margin_std"], diffs.std(), rtol=1e-4)


def test_pairs_are_bradley_terry():
  chosen, rejected = np.array([1.0, -0.5, 2.0]), np.array([0.0, 0.5, 2.5])
  loss, _ = reward.ranking_loss(jnp.stack([chosen, rejected], 1), jnp.tile(jnp.array([0, 1]),
                                                                           (3, 1)))
  want = -np.mean(np.log(1 / (1 + np.exp(-(chosen - rejected)))))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  grad = jax.grad(lambda s: reward.ranking_loss(s, jnp.tile(jnp.array([0, 1]), (3, 1)))[0])(
      jnp.stack([chosen, rejected], 1).astype(jnp.float32))
  # d/dr_w -log sigmoid(r_w - r_l) = -sigmoid(r_l - r_w), averaged over 3 prompts.
  np.testing.assert_allclose(grad[:, 0], -1 / (1 + np.exp(chosen - rejected)) / 3, rtol=1e-5)


def tiny_scalar_model(head_init="reward"):
  cfg = model_config.DecoderConfig(**model_config.preset("tiny"))
  model = ScalarModel(cfg, head_init=head_init)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  return model, params


def test_score_is_read_at_the_last_real_token_whatever_the_padding():
  model, params = tiny_scalar_model()
  seq = np.array([2, 17, 33, 45, 1], np.int32)
  rows = np.zeros((3, 12), np.int32)
  rows[0, :5] = seq
  rows[1, :5] = seq
  rows[1, 5:] = 99  # junk after the end, masked out
  rows[2, :3] = seq[:3]
  mask = np.zeros((3, 12), bool)
  mask[0, :5] = mask[1, :5] = True
  mask[2, :3] = True
  values, score = model.apply({"params": params}, rows, mask)
  np.testing.assert_allclose(score[0], score[1], atol=1e-6)
  np.testing.assert_allclose(score[0], values[0, 4], atol=1e-6)
  np.testing.assert_allclose(score[2], values[2, 2], atol=1e-6)
  alone = model.apply({"params": params}, seq[None])[1][0]
  np.testing.assert_allclose(score[0], alone, atol=1e-5)
  np.testing.assert_array_equal(last_token_index(mask), [4, 4, 2])


def test_head_inits():
  _, params = tiny_scalar_model("reward")
  std = float(np.std(params["head"]["kernel"]))
  assert abs(std - (64 + 1) ** -0.5) < 0.05 and float(params["head"]["bias"]) == 0.0
  _, value_params = tiny_scalar_model("zeros")
  assert float(np.abs(value_params["head"]["kernel"]).max()) == 0.0


def _data(**overrides):
  d = reward_config.get_config("tiny").data
  d.update(overrides)
  return d


def test_embedded_preferences_same_film_ranked_by_ground_truth():
  records = preferences.preference_records(_data(corpus_size=80), "train")
  assert len(records) == 76 and all(len(r["responses"]) == 4 for r in records)
  r = records[0]
  title = corpus.make_review(0, r["index"]).title
  assert r["prompt"] == f"Write a review of {title}."
  assert all(title in resp for resp in r["responses"])
  scores = [scorer.score(t) for t in r["responses"]]
  assert r["ranks"] == preferences.ranks_from_scores(scores)
  assert r["ranks"][int(np.argmax(scores))] == 0
  prefix = preferences.embedded_record(0, 3, 2, "prefix")
  assert 2 <= len(prefix["prompt"].split()) <= 8
  assert all(resp.startswith(" ") for resp in prefix["responses"])


def test_label_noise_flips_the_stated_fraction_and_keeps_clean_labels():
  records = [{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}] * 4000
  noisy = preferences.add_label_noise(records, 0.3, seed=0)
  flipped = np.mean([r["ranks"] == [1, 0] for r in noisy])
  assert abs(flipped - 0.3) < 0.03
  assert all(r["clean_ranks"] == [0, 1] for r in noisy)
  held_out = preferences.preference_records(_data(corpus_size=40, label_noise=0.5), "validation")
  assert all("clean_ranks" not in r for r in held_out)  # held-out labels stay clean


def test_jsonl_pairs_and_rankings(tmp_path):
  path = tmp_path / "prefs.jsonl"
  path.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 2})
                  + "\n" + json.dumps({"prompt": "q", "responses": ["x", "y", "z"],
                                       "ranking": [1, 0, 1]}) + "\n")
  records = preferences.preference_records(_data(source=str(path), holdout_every=100), "train")
  assert records[0] == {"prompt": "q", "responses": ["x", "y", "z"], "ranks": [1, 0, 1],
                        "where": f"{path}:2"}
  assert [p["chosen"] for p in preferences.pairs(records)] == ["y", "y"]  # the tie is skipped
  path.write_text(json.dumps({"prompt": "p", "good": "a", "bad": "b"}) + "\n")
  with pytest.raises(DataError, match=r"prefs\.jsonl:1: unknown preference layout .*"
                                      r"\{prompt, chosen, rejected\}"):
    preferences.preference_records(_data(source=str(path)), "train")
  path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0]}) + "\n")
  with pytest.raises(DataError, match=r"prefs\.jsonl:1: 'ranking' must give a rank"):
    preferences.preference_records(_data(source=str(path)), "train")


def test_tfds_preferences_through_field_map(tmp_path):
  name = tfds_builders.prepare_tiny_preferences(str(tmp_path))
  d = _data(source=f"tfds:{name}", tfds_data_dir=str(tmp_path),
            field_map=ml_collections.ConfigDict({"prompt": "question", "chosen": "good",
                                                 "rejected": "bad"}))
  records = preferences.preference_records(d, "validation")
  assert len(records) == 4 and records[0]["ranks"] == [0, 1]
  assert records[0]["responses"][0].startswith("A wonderful film")


@pytest.fixture(scope="module")
def tok():
  texts = [r.text for r in corpus.reviews(0, 800)]
  return tokenizer.train(itertools.chain(texts, instructions.boilerplate()), 1024)


def test_encoding_masks_and_truncation(tok):
  records = [{"prompt": "Write a review of X.", "responses": ["Good.", "Bad film."],
              "ranks": [0, 1], "margin": 0.5}]
  (ex,), stats = comparisons.encode(records, tok, "alpaca", seq_len=128, k=3)
  assert (stats["records"], stats["examples"], stats["truncated"], stats["dropped"]) == (1, 1, 0, 0)
  np.testing.assert_array_equal(ex["ranks"], [0, 1, -1])
  for i, response in enumerate(["Good.", "Bad film."]):
    row = ex["tokens"][i][ex["mask"][i]]
    assert row[0] == tok.bos_id and row[-1] == tok.eos_id
    reply = ex["tokens"][i][ex["response_mask"][i]]
    assert list(reply) == tok.encode(response) + [tok.eos_id]
  assert not ex["mask"][2].any()
  long_prompt = {"prompt": " ".join(["word"] * 200), "responses": ["Good.", "Bad."],
                 "ranks": [0, 1]}
  too_long = {"prompt": "p", "responses": [" ".join(["word"] * 300), "x"], "ranks": [0, 1]}
  examples, stats = comparisons.encode([long_prompt, too_long], tok, "alpaca", 64, 2)
  assert (stats["examples"], stats["truncated"], stats["dropped"]) == (1, 1, 1)
  assert stats["dropped_why"] == {"response_too_long": 1}
  assert examples[0]["mask"].sum(1).max() == 64 and examples[0]["tokens"][0][0] == tok.bos_id
  # One cut for all of a record's rows: chosen and rejected see the same prompt.
  prompt_rows = [ex_row[~resp & mask] for ex_row, resp, mask in zip(
      examples[0]["tokens"], examples[0]["response_mask"], examples[0]["mask"])]
  np.testing.assert_array_equal(prompt_rows[0], prompt_rows[1])
  # The policy: a prompt cap (TRL's max_prompt_length) cuts from the left, or drops.
  (capped,), stats = comparisons.encode([long_prompt], tok, "alpaca", 128, 2, max_prompt_len=20)
  assert (~capped["response_mask"][0] & capped["mask"][0]).sum() == 20 and stats["truncated"] == 1
  assert list(capped["tokens"][0][1:20]) == comparisons.prompt_ids(
      long_prompt["prompt"], "alpaca", tok)[-19:]  # BOS, then the prompt's last 19 tokens
  with pytest.raises(DataError, match=r"none of the 2 preference records fits .*"
                                      r"'prompt_too_long': 1.*'response_too_long': 1"):
    comparisons.encode([long_prompt, too_long], tok, "alpaca", 64, 2, overflow="drop")


def reward_run(tiny_base, workdir, label_noise):
  config = reward_config.get_config("tiny")
  config.init_from = tiny_base
  config.mesh.num_devices = 1
  config.data.update(label_noise=label_noise, num_responses=2, corpus_size=3200)
  config.train.update(steps=300, eval_every=0, checkpoint_every=300)
  return reward_stage.run(config, workdir)


@pytest.mark.parametrize("label_noise,min_accuracy", [
    (0.0, 0.8), pytest.param(0.1, 0.72, marks=pytest.mark.slow),
    pytest.param(0.3, 0.62, marks=pytest.mark.slow)])
def test_reward_model_learns_the_ground_truth(tiny_base, tmp_path, label_noise, min_accuracy):
  """Pairs on a tiny CLM trunk, 300 steps; accuracy on the 160 clean held-out pairs
  (chance 0.5). Seen: 0.89 / 0.83 / 0.71 for label noise 0 / 0.1 / 0.3, and Spearman
  0.87 with the ground-truth scorer without noise. Thresholds: 0.8 / 0.72 / 0.62
  (0.62 is ~3 standard errors above chance) and Spearman > 0.6."""
  summary = reward_run(tiny_base, str(tmp_path), label_noise)
  held_out = summary["held_out"]
  assert held_out["pairwise_accuracy"] >= min_accuracy
  if label_noise == 0.0:
    assert held_out["spearman_vs_ground_truth"] > 0.6
    norm = json.loads((tmp_path / "reward_normalization.json").read_text())
    assert norm["scale"] > 0
    from research.reward_fn import RewardFunction  # pylint: disable=g-import-not-at-top
    fn = RewardFunction.load(str(tmp_path))
    tokens = np.array([[2, 50, 60, 1, 0]], np.int32)
    np.testing.assert_allclose(fn(tokens, tokens > 0),
                               (fn.raw(tokens, tokens > 0) - norm["offset"]) / norm["scale"],
                               rtol=1e-6)


def test_max_train_records_keeps_the_first_n_and_all_held_out_records():
  full = preferences.preference_records(_data(corpus_size=400), "train")
  cut = preferences.preference_records(_data(corpus_size=400, max_train_records=25), "train")
  assert [r["prompt"] for r in cut] == [r["prompt"] for r in full[:25]]
  assert len(preferences.preference_records(_data(corpus_size=400, max_train_records=25),
                                            "validation")) == 20


def _short_reward(init_from: str, workdir: str, **overrides):
  config = reward_config.get_config("smoke")
  config.init_from = init_from
  config.data.update(num_responses=2, corpus_size=400)
  config.train.update(steps=10, eval_every=10, eval_batches=2, checkpoint_every=10)
  for key, value in overrides.items():
    config[key] = value
  return reward_stage.run(config, workdir)


def test_preference_model_pretraining_continues_trunk_and_head(tiny_base, tmp_path):
  """PMP: a reward run started from a reward run with init_head=True continues its
  head: its held-out loss before any step is the first run's after training (same
  data), not a fresh head's; the summary records both runs it descends from."""
  from research.validate import ConfigError  # pylint: disable=g-import-not-at-top
  first = _short_reward(tiny_base, str(tmp_path / "pmp"))
  second = _short_reward(str(tmp_path / "pmp"), str(tmp_path / "ft"), init_head=True)
  np.testing.assert_allclose(second["eval_at_start"]["loss"], first["eval"]["loss"], rtol=1e-5)
  assert abs(second["eval_at_start"]["loss"] - first["eval_at_start"]["loss"]) > 1e-3
  assert second["init_head"] and not first["init_head"]
  assert [(e["run"], e["stage"]) for e in second["lineage"]] == [
      (str(tmp_path / "pmp"), "reward"), (tiny_base, "clm")]
  with pytest.raises(ConfigError, match="config.init_head=True"):  # a reward run, no flag
    _short_reward(str(tmp_path / "pmp"), str(tmp_path / "bad1"))
  with pytest.raises(ConfigError, match="is a clm run"):  # the flag on a language model
    _short_reward(tiny_base, str(tmp_path / "bad2"), init_head=True)
  assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()
