"""Sentiment lexicon shared by the corpus generator and the ground-truth scorer.

Each polar word has a strength in {1, 2, 3}. The generator writes reviews from
these words; the scorer (`research.data.scorer`) reads any text with them, so
the scorer judges policy samples, not just corpus labels.
"""

from __future__ import annotations


def _graded(strong: str, moderate: str, weak: str) -> dict[str, int]:
  out: dict[str, int] = {}
  for strength, words in ((3, strong), (2, moderate), (1, weak)):
    for word in words.split():
      out[word] = strength
  return out


# Adjectives that describe an aspect or the whole film.
POSITIVE_ADJECTIVES = _graded(
    strong="masterful magnificent extraordinary superb brilliant breathtaking stunning "
    "flawless sublime exceptional phenomenal outstanding spellbinding astonishing "
    "unforgettable transcendent dazzling riveting glorious marvelous",
    moderate="great excellent wonderful terrific gripping moving beautiful delightful "
    "compelling impressive charming powerful inventive elegant thrilling haunting "
    "heartfelt memorable striking fresh clever vivid luminous engrossing captivating "
    "rewarding poignant witty confident assured graceful absorbing",
    weak="good nice fine solid pleasant decent enjoyable likable competent watchable "
    "respectable serviceable agreeable appealing neat tidy sweet warm lively funny "
    "amusing engaging interesting effective capable sincere",
)

NEGATIVE_ADJECTIVES = _graded(
    strong="dreadful atrocious abysmal unwatchable horrendous appalling disastrous "
    "insufferable excruciating wretched dire lamentable woeful execrable painful "
    "catastrophic hideous unbearable worthless shambolic",
    moderate="bad awful terrible boring tedious clumsy lifeless dull bland incoherent "
    "shallow tiresome lazy muddled stilted wooden grating ugly forgettable "
    "hollow overlong plodding sloppy cheap contrived pretentious joyless leaden turgid",
    weak="poor weak flat uneven thin predictable messy slow stale awkward silly clunky "
    "underwhelming mediocre forced derivative routine generic uninspired bumpy "
    "patchy shaky lukewarm",
)

# Verbs and nouns that carry sentiment in the templates and in free text.
POSITIVE_WORDS = _graded(
    strong="masterpiece triumph loved adored treasure gem marvel",
    moderate="enjoyed admired delight pleasure soars shines sparkles sings captivates "
    "impresses succeeds excels gripped recommend charmed",
    weak="liked works delivers lands satisfies entertains smiled laughed",
)

NEGATIVE_WORDS = _graded(
    strong="disaster hated loathed mess travesty fiasco failure",
    moderate="disliked regret waste drags falters collapses stumbles fizzles grates "
    "bored annoyed disappointed disappointment letdown",
    weak="yawned sighed misses struggles wobbles sags overstays",
)

# Manner adverbs used as "handled X {adverb}".
POSITIVE_ADVERBS = _graded(
    strong="brilliantly masterfully superbly beautifully flawlessly",
    moderate="wonderfully skillfully gracefully cleverly confidently",
    weak="nicely well competently capably neatly",
)
NEGATIVE_ADVERBS = _graded(
    strong="dreadfully terribly horribly atrociously painfully",
    moderate="clumsily poorly badly lazily sloppily",
    weak="awkwardly unevenly stiffly timidly blandly",
)

# Multipliers for the next polar word.
INTENSIFIERS = {
    "very": 1.5, "really": 1.4, "truly": 1.5, "extremely": 1.8, "incredibly": 1.8,
    "remarkably": 1.6, "absolutely": 1.8, "utterly": 1.8, "deeply": 1.6, "genuinely": 1.4,
    "thoroughly": 1.6, "quite": 1.2, "rather": 1.1, "fairly": 0.8, "somewhat": 0.7,
    "slightly": 0.5, "mildly": 0.6, "occasionally": 0.7, "almost": 0.8,
}

# A negator flips (and damps) the next polar word within NEGATION_WINDOW words.
NEGATORS = frozenset(
    "not never no hardly barely nothing isn't wasn't aren't weren't doesn't didn't "
    "don't can't cannot couldn't won't nor neither".split())
NEGATION_WINDOW = 3
NEGATION_FACTOR = -0.7

# After "but"/"however"/"yet" the rest of the sentence outweighs what came before;
# after "although"/"though"/"while" it is the clause *before the comma* that is
# conceded (weight < 1).
CONTRAST_AFTER = frozenset("but however yet".split())
CONCESSIVE = frozenset("although though while despite".split())


POLARITY: dict[str, float] = {
    word: float(sign * strength)
    for tables, sign in (((POSITIVE_ADJECTIVES, POSITIVE_WORDS, POSITIVE_ADVERBS), 1),
                         ((NEGATIVE_ADJECTIVES, NEGATIVE_WORDS, NEGATIVE_ADVERBS), -1))
    for table in tables for word, strength in table.items()
}


def polarity(word: str) -> float:
  """Signed base strength of one lower-case word (0 if neutral)."""
  return POLARITY.get(word, 0.0)
