import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import stats as scipy_stats

from configs import common as config_common
from research.data import (corpus, lexicon, pipeline, readers, scorer, sources, tokenizer,
                           vocab)
from research.errors import DataError


@pytest.fixture(scope="module")
def reviews():
  return list(corpus.reviews(seed=0, num_reviews=3000))


@pytest.fixture(scope="module")
def tok(reviews):
  return tokenizer.train((r.text for r in reviews), 512)


def test_corpus_is_deterministic_and_size_independent():
  a = corpus.make_review(0, 123)
  assert a == corpus.make_review(0, 123)
  assert list(corpus.reviews(0, 200))[123] == a
  assert corpus.make_review(1, 123) != a


def test_default_corpus_is_several_mb_with_thousands_of_words():
  cfg = config_common.data()
  texts = [r.text for r in corpus.reviews(cfg.corpus_seed, cfg.corpus_size)]
  assert sum(map(len, texts)) > 5_000_000
  words = set(re.findall(r"[a-z]+(?:'[a-z]+)?", " ".join(texts).lower()))
  assert len(words) > 3000
  # Varied structure: many distinct sentence openings.
  openings = {" ".join(s.split()[:2]) for t in texts[:2000] for s in t.split(". ")}
  assert len(openings) > 500


def test_neutral_vocabulary_has_no_polar_words():
  polar = set(lexicon.POLARITY) | lexicon.NEGATORS | set(lexicon.INTENSIFIERS)
  for name in dir(vocab):
    value = getattr(vocab, name)
    if name in ("SURNAME_STEMS", "SURNAME_ENDINGS"):  # fragments, only ever glued together
      value = tuple(a + b for a in vocab.SURNAME_STEMS for b in vocab.SURNAME_ENDINGS)
    if name.isupper() and isinstance(value, tuple):
      words = {w for phrase in value for w in re.findall(r"[a-z']+", phrase.lower())}
      assert not words & polar, (name, sorted(words & polar))


@pytest.mark.parametrize("better,worse", [
    ("The acting is wonderful.", "The acting is good."),
    ("The acting is very good.", "The acting is good."),
    ("The acting is not bad.", "The acting is bad."),
    ("The plot is dull, but the acting is superb.", "The plot is superb, but the acting is dull."),
    ("Although the plot is dull, the acting is superb.", "The plot is dull. The acting is fine."),
    ("I give it 9 out of 10.", "I give it 3 out of 10."),
    ("It is a masterpiece.", "It is a mess."),
    ("The plot is good.", "The plot is slightly good."),
])
def test_scorer_orders_hand_written_pairs(better, worse):
  assert scorer.sentiment_logit(better) > scorer.sentiment_logit(worse)


def test_scorer_neutral_text_is_one_half():
  assert scorer.score("It follows a chef named Ada who builds a raft.") == 0.5


def test_scorer_tracks_latent_rating(reviews):
  scores = scorer.score_batch(r.text for r in reviews)
  ratings = np.array([r.rating for r in reviews])
  assert scipy_stats.spearmanr(scores, ratings).correlation > 0.85
  labels = np.array([r.label for r in reviews])
  assert ((scores > 0.5) == labels).mean() > 0.93


def test_tokenizer_special_ids_roundtrip_and_cache(tmp_path, reviews, tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2) and tok.pad_id != tok.eos_id
  text = reviews[0].text
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode(text) + [tok.eos_id, 7, 8]) == text  # cut at EOS
  for role in tokenizer.ROLE_TOKENS:
    assert len([i for i in tok.encode(role) if tok.decode([i]).strip()]) == 1
  path = str(tmp_path / "tok.model")
  calls = []
  texts_fn = lambda: (calls.append(1), [r.text for r in reviews])[1]
  first = tokenizer.load_or_train(path, texts_fn, 512)
  second = tokenizer.load_or_train(path, texts_fn, 512)
  assert calls == [1] and first.model_proto == second.model_proto
  with pytest.raises(ValueError, match="config.model.vocab_size"):
    tokenizer.load_or_train(path, texts_fn, 1024)


def test_jsonl_errors_name_file_and_line(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": broken}\n')
  with pytest.raises(DataError, match=r"docs\.jsonl:4: malformed JSON"):
    readers.file_rows(str(path))
  path.write_text('{"text": "fine"}\n{"body": "x"}\n' * 20)
  with pytest.raises(DataError, match=r"docs\.jsonl:2: no field 'text' \(config.data.text_field\)"):
    sources.text_source(_data_cfg(source=str(path)), "train")
  path.write_text('[1, 2]\n')
  with pytest.raises(DataError, match=r"docs\.jsonl:1: expected a JSON object"):
    readers.file_rows(str(path))


def _data_cfg(**overrides):
  return config_common.data(**{"corpus_size": 400, **overrides})


def test_local_text_and_jsonl_sources(tmp_path):
  txt = tmp_path / "c.txt"
  txt.write_text("".join(f"document {i}\n\n" for i in range(40)))
  train = sources.text_source(_data_cfg(source=str(txt)), "train")
  val = sources.text_source(_data_cfg(source=str(txt)), "validation")
  assert len(train) == 38 and len(val) == 2 and val[1] == {"text": "document 20"}
  jl = tmp_path / "c.jsonl"
  jl.write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(20)))
  src = sources.text_source(_data_cfg(source=str(jl), text_field="body"), "train")
  assert src[0] == {"text": "doc 1"}
  with pytest.raises(FileNotFoundError, match="config.data.source"):
    sources.text_source(_data_cfg(source=str(tmp_path / "missing.txt")), "train")


@pytest.mark.parametrize("name", ["imdb_reviews", "tiny_shakespeare", "lm1b"])
def test_tfds_sources_with_mock_data(name, tok):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    src = sources.text_source(_data_cfg(source=f"tfds:{name}"), "train")
    assert len(src) == 12 and isinstance(src[0]["text"], str)
    ds = pipeline.clm_batches(src, tok, seq_len=16, global_batch_size=2, seed=0, train=True)
    batch = next(iter(ds))
  assert batch["inputs"].shape == (2, 16)


def test_packing_invariants(reviews, tok):
  src = sources.ListSource([{"text": r.text} for r in reviews[:50]])
  batch = next(iter(pipeline.clm_batches(src, tok, seq_len=64, global_batch_size=4, seed=0,
                                         train=True)))
  inp, tgt, seg, pos = batch["inputs"], batch["targets"], batch["segment_ids"], batch["positions"]
  for row in range(4):
    for t in range(63):
      if seg[row, t] == seg[row, t + 1] and seg[row, t]:
        assert tgt[row, t] == inp[row, t + 1]  # next-token pairs inside a document
        assert pos[row, t + 1] == pos[row, t] + 1
      elif seg[row, t + 1]:
        assert pos[row, t + 1] == 0  # positions restart with each document
  assert (batch["loss_mask"] == (seg > 0)).all()
  assert (tgt[seg > 0] != tok.pad_id).all()


def test_iterator_resumes_exactly_from_json_state(reviews, tok):
  src = sources.ListSource([{"text": r.text} for r in reviews[:100]])
  ds = pipeline.clm_batches(src, tok, seq_len=64, global_batch_size=4, seed=3, train=True)
  it = iter(ds)
  for _ in range(7):
    next(it)
  saved = pipeline.state_to_json(it.get_state())
  expected = [next(it) for _ in range(30)]  # crosses an epoch boundary
  resumed = iter(ds)
  resumed.set_state(pipeline.state_from_json(saved))
  for a, b in zip(expected, [next(resumed) for _ in range(30)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_epochs_are_reshuffled():
  src = sources.ListSource([{"text": f"d{i}"} for i in range(10)])
  ds = pipeline.examples(src, lambda r: r["text"], seed=0, train=True)
  order = [x for _, x in zip(range(20), iter(ds))]
  assert sorted(order[:10]) == sorted(order[10:]) and order[:10] != order[10:]
