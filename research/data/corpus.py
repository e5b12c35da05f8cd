"""The embedded default corpus: procedurally generated movie reviews.

Every review is drawn from its own `random.Random(seed, index)`, so review i is
the same whatever the corpus size, and the corpus is a pure function of
(seed, size). Each review has a latent rating 1..10; its sentences judge 2-5
aspects of the film (most agreeing with the rating, some not: mixed reviews),
with graded words, intensifiers, negated opposites ("never dull"), contrast
clauses, neutral plot summary, a personal reaction and a verdict. The
structured record (title, genre, director, rating, praised and criticised
aspects) lets later stages build instructions and preference pairs from it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Iterator

from research.data import lexicon, vocab

VALIDATION_EVERY = 20  # review i is held out when i % VALIDATION_EVERY == 0


@dataclasses.dataclass(frozen=True)
class Review:
  index: int
  title: str
  genre: str
  year: int
  director: str
  lead: str
  occupation: str
  rating: int                    # latent attribute, 1..10
  praised: tuple[str, ...]
  criticised: tuple[str, ...]
  text: str

  @property
  def label(self) -> int:
    """1 for a positive review (rating >= 6)."""
    return int(self.rating >= 6)

  @property
  def split(self) -> str:
    return "validation" if self.index % VALIDATION_EVERY == 0 else "train"


def _by_strength(table: dict[str, int]) -> dict[int, tuple[str, ...]]:
  return {s: tuple(sorted(w for w, v in table.items() if v == s)) for s in (1, 2, 3)}


_ADJ = {1: _by_strength(lexicon.POSITIVE_ADJECTIVES), -1: _by_strength(lexicon.NEGATIVE_ADJECTIVES)}
_ADV = {1: _by_strength(lexicon.POSITIVE_ADVERBS), -1: _by_strength(lexicon.NEGATIVE_ADVERBS)}
_VERBS = {1: ("soars", "shines", "sparkles", "sings", "works", "delivers", "lands", "excels"),
          -1: ("drags", "falters", "collapses", "stumbles", "fizzles", "grates", "misses",
               "sags", "wobbles", "struggles")}
_FEEL = {1: ("loved", "liked", "enjoyed", "admired", "adored"),
         -1: ("hated", "disliked", "loathed")}
_NOUNS = {1: ("masterpiece", "triumph", "gem", "treasure", "marvel", "delight", "pleasure"),
          -1: ("mess", "disaster", "letdown", "failure", "travesty", "fiasco", "waste")}
_STRONG_INTENSIFIERS = ("very", "really", "truly", "extremely", "incredibly", "remarkably",
                        "absolutely", "utterly", "thoroughly", "genuinely")
_WEAK_INTENSIFIERS = ("fairly", "somewhat", "slightly", "mildly", "rather", "quite")


def _article(word: str) -> str:
  return "an" if word[0].lower() in "aeiou" else "a"


class _Writer:
  """Draws the words of one review; `sign`/`strength` pick polar vocabulary."""

  def __init__(self, rng: random.Random):
    self.r = rng

  def pick(self, seq):
    return seq[self.r.randrange(len(seq))]

  def person(self) -> str:
    if self.r.random() < 0.5:
      return f"{self.pick(vocab.FIRST_NAMES)} {self.pick(vocab.SURNAMES)}"
    return (f"{self.pick(vocab.FIRST_NAMES)} "
            f"{self.pick(vocab.SURNAME_STEMS)}{self.pick(vocab.SURNAME_ENDINGS)}")

  def strength(self, polarity: float) -> int:
    x = abs(polarity) + self.r.uniform(-0.3, 0.3)
    return 3 if x > 0.75 else 2 if x > 0.35 else 1

  def adj(self, sign: int, strength: int) -> str:
    word = self.pick(_ADJ[sign][strength])
    roll = self.r.random()
    if strength >= 2 and roll < 0.3:
      return f"{self.pick(_STRONG_INTENSIFIERS)} {word}"
    if strength == 1 and roll < 0.25:
      return f"{self.pick(_WEAK_INTENSIFIERS)} {word}"
    return word

  def judgment(self, aspect: str, sign: int, strength: int, director: str, lead: str) -> str:
    """One sentence judging `aspect`, in one of several syntactic shapes."""
    a, the = aspect, f"the {aspect}"
    shape = self.r.randrange(9)
    if shape == 0:
      return f"The {a} is {self.adj(sign, strength)}."
    if shape == 1:
      return f"I found {the} {self.adj(sign, strength)}."
    if shape == 2:  # negated opposite: "never dull" reads as mild praise
      return f"The {a} is {self.pick(('never', 'not', 'hardly'))} {self.adj(-sign, max(1, strength - 1))}."
    if shape == 3:
      return f"{director} handles {the} {self.pick(_ADV[sign][strength])}."
    if shape == 4:
      return f"The {a} {self.pick(_VERBS[sign])}."
    if shape == 5:
      return f"I {self.pick(_FEEL[sign])} {the}."
    if shape == 6:
      adj = self.adj(sign, strength)
      return f"What stays with you is {_article(adj)} {adj} {a}."
    if shape == 7:
      return f"Even {the} feels {self.adj(sign, strength)}."
    return f"{lead} is {self.adj(sign, strength)} in the lead." if a == "lead performance" \
        else f"On {the}, the film is {self.adj(sign, strength)}."


def make_review(seed: int, index: int, rating: int | None = None) -> Review:
  """Review `index` of the corpus with this seed; `rating` forces the sentiment."""
  r = random.Random(seed * 1_000_003 + index)
  w = _Writer(r)
  # The draw is always made, so forcing `rating` keeps every other choice
  # (title, director, opening, plot) the same: the same film, judged differently.
  drawn = r.randint(1, 10)
  rating = drawn if rating is None else rating
  if not 1 <= rating <= 10:
    raise ValueError(f"rating must be in 1..10, got {rating}")
  polarity = (rating - 5.5) / 4.5
  overall = 1 if polarity > 0 else -1

  title = w.pick((
      lambda: f"The {w.pick(vocab.TITLE_ADJECTIVES)} {w.pick(vocab.TITLE_NOUNS)}",
      lambda: f"{w.pick(vocab.TITLE_NOUNS)} of the {w.pick(vocab.TITLE_ADJECTIVES)} {w.pick(vocab.TITLE_NOUNS)}",
      lambda: f"{w.pick(vocab.FIRST_NAMES)}'s {w.pick(vocab.TITLE_NOUNS)}",
      lambda: f"{w.pick(vocab.TITLE_ADJECTIVES)} {w.pick(vocab.TITLE_NOUNS)}",
  ))()
  genre, year = w.pick(vocab.GENRES), r.randint(1950, 2024)
  director, lead = w.person(), w.person()
  occupation, hero = w.pick(vocab.OCCUPATIONS), w.pick(vocab.FIRST_NAMES)

  sentences = [w.pick((
      f"I watched {title} {w.pick(vocab.VENUES)} last {w.pick(vocab.WEEKDAYS)}.",
      f"{title} is {_article(genre)} {genre} from director {director}.",
      f"{director} returns with {title}, {_article(genre)} {genre} released in {year}.",
      f"Here is my take on {title} ({year}).",
      f"{title} arrives with a lot of buzz.",
  ))]
  plot = [f"It follows {_article(occupation)} {occupation} named {hero} who {w.pick(vocab.PLOTS)}.",
          f"Set in {w.pick(vocab.PLACES)}, the story begins when {w.pick(vocab.EVENTS)}.",
          f"Along the way, {hero} meets {w.pick(vocab.MEETS)}.",
          f"{lead} plays {hero}, and the film runs {r.randint(80, 170)} minutes."]
  extra = [
      f"In one scene, {hero} {w.pick(vocab.SCENE_ACTIONS)} while a {w.pick(vocab.OBJECTS)} "
      f"sits on the table.",
      f"The film is about {w.pick(vocab.THEMES)}, {w.pick(vocab.THEMES)} and "
      f"{w.pick(vocab.THEMES)}.",
      f"It was {w.pick(vocab.TECHNICAL)} in {w.pick(vocab.PLACES)}.",
      f"It reminded me of {w.pick(vocab.SURNAME_STEMS)}{w.pick(vocab.SURNAME_ENDINGS)}'s "
      f"early films about {w.pick(vocab.THEMES)}.",
      f"A {w.pick(vocab.OBJECTS)} and a {w.pick(vocab.OBJECTS)} turn out to matter more "
      f"than you expect.",
  ]
  sentences += r.sample(plot, r.randint(1, 3)) + r.sample(extra, r.randint(0, 2))

  aspects = r.sample(vocab.ASPECTS, r.randint(2, 5))
  agree = 0.55 + 0.4 * abs(polarity)
  praised, criticised = [], []
  for aspect in aspects:
    sign = overall if r.random() < agree else -overall
    (praised if sign > 0 else criticised).append(aspect)
    sentences.append(w.judgment(aspect, sign, w.strength(polarity), director, lead))

  if praised and criticised and r.random() < 0.5:  # a contrast clause, the verdict last
    first, last = (criticised, praised) if overall > 0 else (praised, criticised)
    x, y = w.pick(first), w.pick(last)
    s1, s2 = -overall, overall
    sentences.append(w.pick((
        f"The {x} is {w.adj(s1, 1)}, but the {y} is {w.adj(s2, w.strength(polarity))}.",
        f"Although the {x} is {w.adj(s1, 1)}, the {y} is {w.adj(s2, w.strength(polarity))}.",
    )))

  if r.random() < 0.6:
    sentences.append(w.pick((
        f"{w.pick(vocab.COMPANIONS).capitalize()} {w.pick(_FEEL[overall])} it too.",
        f"I {w.pick(('laughed', 'smiled')) if overall > 0 else w.pick(('yawned', 'sighed'))} "
        f"more than once.",
        f"I went in with {w.pick(('low', 'high', 'modest', 'no'))} expectations.",
    )))

  adj, noun = w.adj(overall, w.strength(polarity)), w.pick(_NOUNS[overall])
  verdict = [
      f"Overall, {title} is {_article(adj)} {adj} {genre}.",
      (f"I would recommend it to {w.pick(vocab.AUDIENCES)}." if overall > 0 else
       f"I would not recommend it to {w.pick(vocab.AUDIENCES)}."),
      f"It is {_article(noun)} {noun}.",
  ]
  sentences += r.sample(verdict, r.randint(1, 2))
  if r.random() < 0.5:
    sentences.append(w.pick((f"{rating}/10.", f"I give it {rating} out of 10.")))

  return Review(index=index, title=title, genre=genre, year=year, director=director,
                lead=lead, occupation=occupation, rating=rating, praised=tuple(praised),
                criticised=tuple(criticised), text=" ".join(sentences))


def reviews(seed: int, num_reviews: int, split: str | None = None) -> Iterator[Review]:
  """Reviews 0..num_reviews-1, optionally only those of one split."""
  for i in range(num_reviews):
    review = make_review(seed, i)
    if split is None or review.split == split:
      yield review
