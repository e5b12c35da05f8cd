"""research/ratings.py: Bradley-Terry fits against hand-computed ratings and an
independent reference, the infinite-MLE check, and the grouped bootstrap."""

import dataclasses
import math

import numpy as np
import pytest

from research import ratings
from research.ratings import Game


def elo_gap(games, n, i, j, l2=0.0):
  elo = ratings.to_elo(ratings.fit(games, n, l2=l2))
  return elo[i] - elo[j]


def test_two_players_three_to_one():
  games = [Game(0, 1, 1.0)] * 3 + [Game(0, 1, 0.0)]
  assert elo_gap(games, 2, 0, 1) == pytest.approx(400 * math.log10(3), abs=1e-6)
  assert 400 * math.log10(3) == pytest.approx(190.85, abs=0.01)
  # The same results entered from b's side.
  games = [Game(1, 0, 0.0)] * 3 + [Game(1, 0, 1.0)]
  assert elo_gap(games, 2, 0, 1) == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_three_players_strengths_four_two_one():
  # Expected wins under strengths 4:2:1 equal the observed ones, e.g. A-B: 3 * 4/6 = 2.
  games = ([Game(0, 1, 1.0)] * 2 + [Game(0, 1, 0.0)] + [Game(1, 2, 1.0)] * 2 + [Game(2, 1, 1.0)]
           + [Game(0, 2, 1.0)] * 4 + [Game(2, 0, 1.0)])
  theta = ratings.fit(games, 3)
  np.testing.assert_allclose(theta, np.log([4, 2, 1]) - np.log([4, 2, 1]).mean(), atol=1e-9)
  assert theta.sum() == pytest.approx(0, abs=1e-12)
  elo = ratings.to_elo(theta)
  assert elo[0] - elo[1] == pytest.approx(400 * math.log10(2), abs=1e-6)
  assert elo[0] - elo[2] == pytest.approx(400 * math.log10(4), abs=1e-6)
  assert elo.mean() == pytest.approx(1000)


def test_ties_count_half():
  games = [Game(0, 1, 1.0), Game(0, 1, 0.0), Game(0, 1, 0.5), Game(0, 1, 0.5)]
  assert elo_gap(games, 2, 0, 1) == pytest.approx(0, abs=1e-9)
  games = [Game(0, 1, 1.0), Game(0, 1, 0.5), Game(0, 1, 0.5)]  # score 2/3 over 3 games
  assert elo_gap(games, 2, 0, 1) == pytest.approx(400 * math.log10(2), abs=1e-6)
  games = [Game(0, 1, 1.0), Game(0, 1, 0.5), Game(1, 0, 0.5)]  # a tie entered from b's side
  assert elo_gap(games, 2, 0, 1) == pytest.approx(400 * math.log10(2), abs=1e-6)


def test_outcome():
  assert ratings.outcome(0.9, 0.2) == 1.0
  assert ratings.outcome(0.2, 0.9) == 0.0
  assert ratings.outcome(0.5, 0.5) == 0.5
  assert ratings.outcome(0.52, 0.5, tie_tol=0.05) == 0.5
  assert ratings.outcome(0.52, 0.5, tie_tol=0.01) == 1.0


def random_games(rng, n=5, m=60):
  """Every pair meets at least once with a fractional score (so the MLE is finite),
  plus random games with wins, losses, ties and fractions."""
  games = [Game(i, j, float(rng.uniform(0.05, 0.95))) for i in range(n) for j in range(i + 1, n)]
  for _ in range(m):
    i, j = rng.choice(n, 2, replace=False)
    s = rng.choice([0.0, 1.0, 0.5, float(rng.uniform())])
    games.append(Game(int(i), int(j), float(s), int(rng.integers(10))))
  return games


def hunter_mm(games, n, iters=20000):
  """Hunter 2004's MM iteration for plain BT: gamma_i = W_i / sum_j n_ij / (gamma_i + gamma_j)."""
  wins, count = np.zeros(n), np.zeros((n, n))
  for g in games:
    wins[g.a] += g.score
    wins[g.b] += 1 - g.score
    count[g.a, g.b] += 1
    count[g.b, g.a] += 1
  gamma = np.ones(n)
  for _ in range(iters):
    gamma = wins / (count / (gamma[:, None] + gamma[None, :])).sum(1)
    gamma /= np.exp(np.log(gamma).mean())
  return np.log(gamma)


def gradient_ascent(games, n, l2, iters=20000):
  """Gradient ascent on sum log P(score) - l2/2 |theta|^2, step 1/L (L bounds the curvature)."""
  a = np.array([g.a for g in games])
  b = np.array([g.b for g in games])
  s = np.array([g.score for g in games])
  degree = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
  lr = 1 / (degree.max() / 2 + l2)
  theta = np.zeros(n)
  for _ in range(iters):
    r = s - 1 / (1 + np.exp(-(theta[a] - theta[b])))
    theta += lr * (np.bincount(a, r, n) - np.bincount(b, r, n) - l2 * theta)
  return theta


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_references(seed):
  rng = np.random.default_rng(seed)
  games = random_games(rng)
  np.testing.assert_allclose(ratings.fit(games, 5), hunter_mm(games, 5), atol=1e-6)
  for l2 in [0.5, 3.0]:
    theta = ratings.fit(games, 5, l2=l2)
    np.testing.assert_allclose(theta, gradient_ascent(games, 5, l2), atol=1e-6)
    assert not np.allclose(theta, ratings.fit(games, 5), atol=1e-3)  # the penalty matters


def test_players_without_games_and_separate_pools():
  games = [Game(0, 1, 1.0)] * 3 + [Game(0, 1, 0.0)] + [Game(3, 4, 0.5)]
  theta = ratings.fit(games, 5)
  assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-9)
  assert theta[2] == 0 and theta[3] == theta[4] == 0
  theta = ratings.fit(games, 5, l2=1.0)
  assert theta[2] == 0 and theta.sum() == pytest.approx(0, abs=1e-12)


def test_clean_sweep():
  games = [Game(0, 1, 1.0), Game(2, 0, 0.0), Game(0, 1, 1.0), Game(1, 2, 0.5)]
  with pytest.raises(ValueError, match=r"player 0 won every game.*l2 > 0"):
    ratings.fit(games, 3)
  with pytest.raises(ValueError, match=r"player 1 lost every game"):
    ratings.fit([Game(0, 1, 1.0), Game(2, 1, 1.0), Game(0, 2, 0.5)], 3)
  theta = ratings.fit(games, 3, l2=ratings.L2)
  assert np.isfinite(theta).all() and theta.argmax() == 0
  assert theta[0] - max(theta[1:]) > 1  # far ahead, as its record says
  rows = ratings.rate(games, ["a", "b", "c"], samples=20)
  assert rows[0]["name"] == "a" and all(np.isfinite(r["lo"]) for r in rows)


def test_group_that_lost_every_game_to_the_rest():
  # 0 and 1 split their games, as do 2 and 3, but 0 and 1 beat 2 and 3 every time:
  # no single player swept, yet the MLE is infinite.
  games = [Game(0, 1, 1.0), Game(1, 0, 1.0), Game(2, 3, 1.0), Game(3, 2, 1.0),
           Game(0, 2, 1.0), Game(3, 1, 0.0)]
  message = r"players \[2, 3\] lost every game against players \[0, 1\]"
  with pytest.raises(ValueError, match=message):
    ratings.fit(games, 4)
  # One tie across lets the ratings be finite.
  theta = ratings.fit(games + [Game(1, 2, 0.5)], 4)
  assert np.isfinite(theta).all() and min(theta[:2]) > max(theta[2:])


def test_input_errors():
  with pytest.raises(ValueError, match="out of range"):
    ratings.fit([Game(0, 2, 1.0)], 2)
  with pytest.raises(ValueError, match="out of range"):
    ratings.fit([Game(-1, 0, 1.0)], 2)
  with pytest.raises(ValueError, match=r"score 1.5 outside \[0, 1\]"):
    ratings.fit([Game(0, 1, 1.5)], 2)
  with pytest.raises(ValueError, match="outside"):
    ratings.fit([Game(0, 1, float("nan"))], 2)
  with pytest.raises(ValueError, match="plays itself"):
    ratings.fit([Game(1, 1, 1.0)], 2)


def grouped_games(rng, copies=1):
  """4 players of strengths 0, 0.4, 0.8, 1.2 (theta); 30 prompts (groups), each with
  one game per pair; `copies` repeats the whole set as new prompts."""
  strength = np.array([0.0, 0.4, 0.8, 1.2])
  games = []
  for prompt in range(30 * copies):
    for i in range(4):
      for j in range(i + 1, 4):
        p = 1 / (1 + np.exp(strength[j] - strength[i]))
        games.append(Game(i, j, float(rng.uniform() < p), prompt))
  return games


def test_bootstrap_interval():
  games = grouped_games(np.random.default_rng(0))
  elo = ratings.to_elo(ratings.fit(games, 4, l2=ratings.L2))
  lo, hi = ratings.bootstrap(games, 4, samples=300, seed=1)
  assert (lo < elo).all() and (elo < hi).all()
  assert ((hi - lo) > 20).all()
  # Deterministic for a seed, not the same for another.
  lo2, hi2 = ratings.bootstrap(games, 4, samples=300, seed=1)
  np.testing.assert_array_equal(lo, lo2)
  np.testing.assert_array_equal(hi, hi2)
  lo3, _ = ratings.bootstrap(games, 4, samples=300, seed=2)
  assert not np.array_equal(lo, lo3)
  # Nine times the prompts: about a third the width.
  lo9, hi9 = ratings.bootstrap(grouped_games(np.random.default_rng(0), copies=9), 4,
                               samples=300, seed=1)
  ratio = (hi9 - lo9) / (hi - lo)
  assert (ratio > 0.2).all() and (ratio < 0.5).all()
  # A narrower level, a narrower interval.
  lo50, hi50 = ratings.bootstrap(games, 4, samples=300, seed=1, level=0.5)
  assert ((hi50 - lo50) < (hi - lo)).all()


@pytest.mark.parametrize("level", [0.95, 0.5])
def test_bootstrap_percentiles_cover_level(level):
  # Two players, one game per group: each refit is logit(mean score) (l2=0), so the
  # bootstrap distribution can be drawn here independently; the interval should hold
  # `level` of it.
  rng = np.random.default_rng(4)
  s = rng.uniform(0.2, 0.9, 40)
  games = [Game(0, 1, float(x), g) for g, x in enumerate(s)]
  lo, hi = ratings.bootstrap(games, 2, samples=1000, seed=5, l2=0.0, level=level)
  means = s[rng.integers(40, size=(4000, 40))].mean(1)
  elo0 = 1000 + ratings.ELO_SCALE * np.log(means / (1 - means)) / 2
  assert np.mean((lo[0] <= elo0) & (elo0 <= hi[0])) == pytest.approx(level, abs=0.03)
  np.testing.assert_allclose([lo[1], hi[1]], [2000 - hi[0], 2000 - lo[0]])


def test_bootstrap_resamples_groups_whole():
  # One group: every resample is the data itself.
  games = [Game(0, 1, 1.0), Game(0, 1, 1.0), Game(1, 0, 1.0), Game(0, 2, 0.5)]
  elo = ratings.to_elo(ratings.fit(games, 3, l2=ratings.L2))
  lo, hi = ratings.bootstrap(games, 3, samples=50)
  np.testing.assert_array_equal(lo, elo)
  np.testing.assert_array_equal(hi, elo)
  # Each prompt's games balance (a beats b, b beats a): every resample of whole prompts
  # rates them equal; resampled game by game they would not be.
  games = [Game(0, 1, 1.0, p) for p in range(20)] + [Game(1, 0, 1.0, p) for p in range(20)]
  lo, hi = ratings.bootstrap(games, 2, samples=100)
  np.testing.assert_allclose([lo, hi], 1000, atol=1e-9)
  split = [dataclasses.replace(g, group=i) for i, g in enumerate(games)]
  lo, hi = ratings.bootstrap(split, 2, samples=100)
  assert (hi - lo > 50).all()


def test_win_matrix():
  games = [Game(0, 1, 1.0), Game(1, 0, 0.5), Game(2, 0, 0.25)]
  m = ratings.win_matrix(games, 4)
  assert m[0, 1] == pytest.approx(0.75) and m[1, 0] == pytest.approx(0.25)
  assert m[2, 0] == pytest.approx(0.25) and m[0, 2] == pytest.approx(0.75)
  assert np.isnan(m[1, 2]) and np.isnan(m[3]).all() and np.isnan(np.diag(m)).all()


def test_rate_and_table():
  games = grouped_games(np.random.default_rng(3))
  names = ["w", "x", "y", "z"]
  rows = ratings.rate(games, names, samples=100)
  assert [r["name"] for r in rows] == ["z", "y", "x", "w"]  # the strengths' order
  assert [r["elo"] for r in rows] == sorted((r["elo"] for r in rows), reverse=True)
  assert all(r["lo"] <= r["elo"] <= r["hi"] and r["games"] == 90 for r in rows)
  m = ratings.win_matrix(games, 4)
  for r in rows:
    i = names.index(r["name"])
    assert r["score"] == pytest.approx(np.nanmean(m[i]))  # equal games against each
  text = ratings.table(rows)
  lines = text.splitlines()
  assert lines[0] == "| rank | name | Elo | 95% CI | games | mean score |"
  assert len(lines) == 6 and lines[2].startswith(f"| 1 | z | {rows[0]['elo']:.0f} | +")
  # Without the bootstrap, and with a player who never played.
  rows = ratings.rate([Game(0, 1, 1.0), Game(1, 0, 1.0)], ["a", "b", "c"], samples=0)
  assert all(math.isnan(r["lo"]) for r in rows)
  idle = next(r for r in rows if r["name"] == "c")
  assert idle["games"] == 0 and math.isnan(idle["score"]) and idle["elo"] == pytest.approx(1000)
  assert "| c | 1000 | - | 0 | - |" in ratings.table(rows)
