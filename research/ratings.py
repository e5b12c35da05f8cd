"""Ratings of players (models) from pairwise games: Bradley-Terry on the Elo scale.

The Bradley-Terry model (Bradley & Terry 1952) gives each player a strength
theta (natural log) and P(a beats b) = sigmoid(theta_a - theta_b). A game's
score is a's result against b in [0, 1]: 1 a win, 0 a loss, 0.5 a tie (half a
win each, the standard treatment), or any fraction (a judge's probability
averaged over both presentation orders). `fit` finds the maximum-likelihood
theta by Newton-Raphson; Hunter 2004 ("MM algorithms for generalized
Bradley-Terry models") gives the condition for it to be finite, which `fit`
checks. `to_elo` puts theta on the Elo scale (Elo 1978: 400 points are a factor
10 in odds), and `bootstrap` gives percentile intervals by refitting on
resampled groups of games (a prompt's games together), as Chatbot Arena reports
ratings (Chiang et al. 2024, sec. 5). `rate` does all of it; `table` prints it.
Pure numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

ELO_SCALE = 400 / math.log(10)  # Elo points per unit of theta (natural-log odds)

# `rate`'s (and `bootstrap`'s) penalty l2/2 * |theta|^2: a N(0, 1/l2) prior, i.e. a
# standard deviation of ~32 natural-log units (~14,000 Elo). It keeps a clean sweep
# (or a bootstrap resample with one) finite: one win in one game rates ~1,010 Elo above
# the loser, 10 in 10 ~1,360, rather than infinitely; and it moves a rating with a
# finite MLE negligibly, by ~l2 * theta / curvature: a 400-Elo gap over 100 games
# shrinks by 0.02 Elo, over 10 games by 0.24.
L2 = 1e-3


@dataclasses.dataclass
class Game:
  """One game: `score` is a's result against b in [0, 1] (1 win, 0 loss, 0.5 tie,
  or a fraction); `group` is the unit `bootstrap` resamples (e.g. the prompt)."""
  a: int
  b: int
  score: float
  group: int = 0


def outcome(score_a: float, score_b: float, tie_tol: float = 0.0) -> float:
  """A game's score from two graded results: 1.0 if a's is higher, 0.0 if lower,
  0.5 (a tie) when they differ by at most `tie_tol`."""
  if abs(score_a - score_b) <= tie_tol:
    return 0.5
  return 1.0 if score_a > score_b else 0.0


def _arrays(games: Sequence[Game], num_players: int):
  """(a, b, score, group) arrays of `games`, validated."""
  a = np.array([g.a for g in games], dtype=np.int64)
  b = np.array([g.b for g in games], dtype=np.int64)
  s = np.array([g.score for g in games], dtype=np.float64)
  group = np.array([g.group for g in games], dtype=np.int64)
  for i, g in enumerate(games):
    if not (0 <= g.a < num_players and 0 <= g.b < num_players):
      raise ValueError(f"game {i}: players ({g.a}, {g.b}) out of range for {num_players} players")
    if g.a == g.b:
      raise ValueError(f"game {i}: player {g.a} plays itself")
    if not 0.0 <= g.score <= 1.0:  # false for nan too
      raise ValueError(f"game {i}: score {g.score} outside [0, 1]")
  return a, b, s, group


def _closure(adj: np.ndarray) -> np.ndarray:
  """Reflexive-transitive closure of a boolean adjacency matrix."""
  reach = adj | np.eye(len(adj), dtype=bool)
  while True:
    new = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    if (new == reach).all():
      return reach
    reach = new


def _check_finite(a, b, s, num_players: int) -> None:
  """Raise if the maximum-likelihood theta is infinite: Hunter 2004, Assumption 1
  (after Ford 1957) holds in each connected set of players iff however it is split
  in two, someone in each part scored against someone in the other, i.e. the
  "scored against" graph is strongly connected there."""
  beat = np.zeros((num_players, num_players), dtype=bool)
  beat[a[s > 0], b[s > 0]] = True
  beat[b[s < 1], a[s < 1]] = True
  reach, met = _closure(beat), _closure(beat | beat.T)
  bad = np.argwhere(met & ~reach)
  if not len(bad):
    return
  i = bad[0][0]
  group = np.flatnonzero(reach[i])  # closed: scored nothing against anyone outside it
  rest = np.flatnonzero(met[i] & ~reach[i])
  if len(rest) == 1:
    what = f"player {rest[0]} won every game"
  elif len(group) == 1:
    what = f"player {group[0]} lost every game"
  else:
    what = f"players {group.tolist()} lost every game against players {rest.tolist()}"
  raise ValueError(f"{what}: the maximum-likelihood Bradley-Terry ratings are infinite; "
                   "pass l2 > 0 (e.g. ratings.L2) for finite, regularised ones")


def _objective(theta, a, b, s, w, l2):
  """The penalised log-likelihood sum w * log P(score) - l2/2 * |theta|^2."""
  d = theta[a] - theta[b]
  ll = -(s * np.logaddexp(0.0, -d) + (1 - s) * np.logaddexp(0.0, d))
  return float(np.sum(w * ll) - 0.5 * l2 * np.sum(theta ** 2))


def _fit(a, b, s, w, num_players: int, l2: float, iters: int, tol: float) -> np.ndarray:
  """`fit` on arrays, each game weighted by w (> 0)."""
  if l2 < 0:
    raise ValueError(f"l2 must be >= 0, got {l2}")
  if l2 == 0:
    _check_finite(a, b, s, num_players)
  theta = np.zeros(num_players)
  if not len(a):
    return theta
  obj = _objective(theta, a, b, s, w, l2)
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
    r, v = w * (s - p), w * p * (1 - p)
    grad = np.bincount(a, r, num_players) - np.bincount(b, r, num_players) - l2 * theta
    hess = np.zeros((num_players, num_players))  # minus the Hessian: a weighted Laplacian + l2
    np.add.at(hess, (a, a), v)
    np.add.at(hess, (b, b), v)
    np.add.at(hess, (a, b), -v)
    np.add.at(hess, (b, a), -v)
    if l2 > 0:
      step = np.linalg.solve(hess + l2 * np.eye(num_players), grad)
    else:  # singular (theta + c fits as well): the pseudo-inverse keeps each mean
      step = np.linalg.pinv(hess, hermitian=True) @ grad
    t = 1.0
    for _ in range(40):  # halve a step that lowers the objective (beyond rounding)
      new = theta + t * step
      new -= new.mean()
      new_obj = _objective(new, a, b, s, w, l2)
      if new_obj >= obj - 1e-12 * (1 + abs(obj)):
        break
      t /= 2
    theta, obj = new, new_obj
    if np.max(np.abs(t * step), initial=0.0) <= tol:
      return theta
  raise RuntimeError(f"Bradley-Terry fit did not converge in {iters} Newton steps")


def fit(games: Sequence[Game], num_players: int, l2: float = 0.0, iters: int = 100,
        tol: float = 1e-10) -> np.ndarray:
  """Maximum-likelihood Bradley-Terry strengths theta (natural log, mean 0) of
  `num_players` players from `games` (Bradley & Terry 1952), penalised by
  l2/2 * |theta|^2: Newton-Raphson, each step halved until it does not lower the
  objective, until no strength moves by more than `tol`.

  With l2 == 0 the Hessian is singular (adding a constant to theta changes
  nothing); the pseudo-inverse step keeps sum(theta) = 0 (and the mean of each set
  of players that never met the others, whose relative level no game fixes).
  Players without games get 0. A player who won (or lost) every game, or a set of
  players who lost every game against the rest, has no finite MLE: with l2 == 0
  that raises ValueError. `rate` uses l2 = `L2` (small: see there).
  """
  a, b, s, _ = _arrays(games, num_players)
  return _fit(a, b, s, np.ones_like(s), num_players, l2, iters, tol)


def to_elo(theta: np.ndarray, base: float = 1000.0) -> np.ndarray:
  """theta on the Elo scale (Elo 1978): base + 400 / ln(10) * (theta - mean), so a
  400-point gap is 10:1 odds."""
  theta = np.asarray(theta, dtype=np.float64)
  return base + ELO_SCALE * (theta - theta.mean())


def bootstrap(games: Sequence[Game], num_players: int, samples: int = 1000, seed: int = 0,
              l2: float = L2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """Percentile `level` intervals (lo, hi) of each player's Elo: `samples` times,
  draw as many groups as there are, with replacement, keeping each group's games
  together, and refit (Chiang et al. 2024, sec. 5, who resample single battles).
  A player with no game in a resample rates at the mean there (with l2 > 0)."""
  a, b, s, group = _arrays(games, num_players)
  _, inverse = np.unique(group, return_inverse=True)
  k = int(inverse.max()) + 1 if len(inverse) else 0
  rng = np.random.default_rng(seed)
  elos = np.empty((samples, num_players))
  for i in range(samples):
    w = np.bincount(rng.integers(k, size=k), minlength=k)[inverse].astype(np.float64)
    keep = w > 0
    try:
      theta = _fit(a[keep], b[keep], s[keep], w[keep], num_players, l2, 100, 1e-10)
    except ValueError as e:
      raise ValueError(f"bootstrap resample {i}: {e}") from None
    elos[i] = to_elo(theta)
  lo, hi = np.percentile(elos, [50 * (1 - level), 50 * (1 + level)], axis=0)
  return lo, hi


def win_matrix(games: Sequence[Game], num_players: int) -> np.ndarray:
  """Mean score of the row player against the column player; nan where they never met."""
  a, b, s, _ = _arrays(games, num_players)
  total = np.zeros((num_players, num_players))
  count = np.zeros((num_players, num_players))
  np.add.at(total, (a, b), s)
  np.add.at(total, (b, a), 1 - s)
  np.add.at(count, (a, b), 1)
  np.add.at(count, (b, a), 1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / count, np.nan)


def rate(games: Sequence[Game], names: Sequence[str], l2: float = L2, samples: int = 1000,
         seed: int = 0, level: float = 0.95) -> list[dict]:
  """One row per player, best first: name, elo (the penalised BT fit on the Elo
  scale, base 1000), lo and hi (the bootstrap interval; nan with samples=0), games
  played and score (the mean result over them; nan without games)."""
  n = len(names)
  elo = to_elo(fit(games, n, l2=l2))
  if samples:
    lo, hi = bootstrap(games, n, samples=samples, seed=seed, l2=l2, level=level)
  else:
    lo = hi = np.full(n, np.nan)
  a, b, s, _ = _arrays(games, n)
  played = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
  won = np.bincount(a, s, n) + np.bincount(b, 1 - s, n)
  rows = [{"name": names[i], "elo": float(elo[i]), "lo": float(lo[i]), "hi": float(hi[i]),
           "games": int(played[i]),
           "score": float(won[i] / played[i]) if played[i] else math.nan} for i in range(n)]
  return sorted(rows, key=lambda r: -r["elo"])


def table(rows: Sequence[dict], level: float = 0.95) -> str:
  """`rate`'s rows as a markdown table; the interval as +/- distances from the rating."""
  lines = [f"| rank | name | Elo | {round(100 * level)}% CI | games | mean score |",
           "|---:|:---|---:|:---:|---:|---:|"]
  for rank, r in enumerate(rows, 1):
    ci = ("-" if math.isnan(r["lo"]) else
          f"+{r['hi'] - r['elo']:.0f} / -{r['elo'] - r['lo']:.0f}")
    score = "-" if math.isnan(r["score"]) else f"{r['score']:.3f}"
    lines.append(f"| {rank} | {r['name']} | {r['elo']:.0f} | {ci} | {r['games']} | {score} |")
  return "\n".join(lines)
