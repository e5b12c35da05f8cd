"""A generative judge: a language-model run asked which of two responses is better.

RLAIF (Bai et al. 2022b, "Constitutional AI", sec. 4; Lee et al. 2023, "RLAIF",
sec. 2.1): the judge reads the request and both responses in one prompt and its
preference is the probability it gives the answer "A" against "B",

    P_A(a, b) = p("A" | prompt(a, b)) / (p("A" | prompt(a, b)) + p("B" | prompt(a, b))),

the answers scored as SFT replies (the letter, then EOS) by one forward pass. LMs
favour a position, so each pair is judged in both orders and the two averaged
(Lee et al. 2023, sec. 2.1.1, "to mitigate position bias"):

    P(a > b) = (P_A(a, b) + 1 - P_A(b, a)) / 2,        P(a > b) + P(b > a) = 1.

Any policy run can judge (`GenerativeJudge.load(run)`); one trained for it does it
better: `config.data.source='embedded_judge'` is the embedded task's comparisons in
this very prompt (`data/judge_prompts.py`), labelled by the ground truth (a distilled "generative reward
model"). The judge serves three places: the preferences stage and RL as a reward
source (`JudgeReward`, `config.reward.source='judge'`), and the Elo ratings between
runs (`research/rate.py`).
"""

from __future__ import annotations

import numpy as np

from research.data import judge_prompts, templates

QUESTION, SENTIMENT_QUESTION, ANSWERS = (judge_prompts.QUESTION, judge_prompts.SENTIMENT_QUESTION,
                                         judge_prompts.ANSWERS)
judge_prompt, embedded_records = judge_prompts.judge_prompt, judge_prompts.embedded_records


class GenerativeJudge:
  """`prefer(prompts, a, b)` -> P(a > b) per row, position-debiased; `first(...)` the
  one-order probability P_A(a, b) (what the position bias is measured on)."""

  def __init__(self, model, params, tok, *, template: str = "alpaca", question: str = QUESTION,
               mesh=None, rules=None, batch: int = 32):
    from research.rlhf.reference import ReferenceScorer  # pylint: disable=g-import-not-at-top
    self.model, self.tok, self.template, self.question = model, tok, template, question
    self.batch = batch
    self.scorer = ReferenceScorer(model, params, mesh, rules)
    self.replies = [templates.reply_ids(answer, template, tok) for answer in ANSWERS]

  @classmethod
  def load(cls, run: str, *, question: str = QUESTION, template: str = "", mesh=None,
           rules=None, batch: int = 32) -> GenerativeJudge:
    """The language model of any run (`runs.load_policy`), prompted in its own
    template unless `template` says otherwise."""
    from research import runs  # pylint: disable=g-import-not-at-top
    from research.training import partitioning  # pylint: disable=g-import-not-at-top
    config = runs.load_config(run)
    if mesh is None:
      mesh, rules = partitioning.mesh_and_rules(config)
    model, params = runs.load_policy(run, mesh, rules)
    tok = runs.load_tokenizer(runs.tokenizer_path(run))
    template = template or config.get("data", {}).get("template", "alpaca")
    return cls(model, params, tok, template=template, question=question, mesh=mesh,
               rules=rules, batch=batch)

  def _prompt_ids(self, prompt, a: str, b: str) -> list[int]:
    """The rendered comparison; responses cut to share the room the model has."""
    room = self.model.cfg.max_len - max(len(r) for r in self.replies)
    ids = templates.prompt_ids(judge_prompt(prompt, a, b, self.question), self.template,
                               self.tok)
    budget = max(len(self.tok.encode(a)), len(self.tok.encode(b))) if len(ids) > room else 0
    while len(ids) > room and budget > 8:
      budget = budget * 3 // 4
      a_cut, b_cut = (self.tok.decode(self.tok.encode(t)[:budget]) for t in (a, b))
      ids = templates.prompt_ids(judge_prompt(prompt, a_cut, b_cut, self.question),
                                 self.template, self.tok)
    if len(ids) > room:
      raise ValueError(f"the judge's prompt takes {len(ids)} tokens even with the responses "
                       f"cut; the judge model holds {self.model.cfg.max_len}")
    return ids

  def first(self, prompts, a, b) -> np.ndarray:
    """P_A(a, b): the probability of answering "A" with `a` shown first, per row."""
    rows = [(self._prompt_ids(p, x, y), reply) for p, x, y in zip(prompts, a, b)
            for reply in self.replies]
    width = -(-max(len(ids) + len(reply) for ids, reply in rows) // 64) * 64
    logp = []
    for lo in range(0, len(rows), self.batch):
      part = rows[lo:lo + self.batch]
      tokens = np.zeros((self.batch, width), np.int32)
      mask = np.zeros((self.batch, width), bool)
      reply_mask = np.zeros((self.batch, width), bool)
      for i, (ids, reply) in enumerate(part):
        n = len(ids) + len(reply)
        tokens[i, :n] = ids + reply
        mask[i, :n] = True
        reply_mask[i, len(ids):n] = True
      logp.append(np.asarray(self.scorer(tokens, mask, reply_mask))[:len(part)])
    pair = np.concatenate(logp).reshape(-1, 2)
    return 1.0 / (1.0 + np.exp(pair[:, 1] - pair[:, 0]))

  def prefer(self, prompts, a, b) -> np.ndarray:
    """P(a > b), averaged over both presentation orders."""
    return 0.5 * (self.first(prompts, a, b) + 1.0 - self.first(prompts, b, a))


def agreement(judge: GenerativeJudge, records: list[dict]) -> dict:
  """How a judge does on pairs with known labels ({prompt, chosen, rejected}), each
  shown once in a random order (the single-order judge) and then both orders:
  accuracy, the share of "A" answers (0.5 without a position bias) and how often the
  two orders agree (Lee et al. 2023, sec. 4.4)."""
  prompts = [r["prompt"] for r in records]
  chosen, rejected = [r["chosen"] for r in records], [r["rejected"] for r in records]
  p_cr = judge.first(prompts, chosen, rejected)      # chosen shown first
  p_rc = judge.first(prompts, rejected, chosen)      # rejected shown first
  shown_first = np.arange(len(records)) % 2 == 0     # one order per pair, alternating
  single = np.where(shown_first, p_cr > 0.5, p_rc < 0.5)
  both = 0.5 * (p_cr + 1.0 - p_rc)
  return {"pairs": len(records),
          "accuracy_one_order": float(np.mean(single)),
          "accuracy_both_orders": float(np.mean(both > 0.5)),
          "share_answering_A": float(np.mean(np.concatenate([p_cr, p_rc]) > 0.5)),
          "mean_p_A": float(np.mean(np.concatenate([p_cr, p_rc]))),
          "orders_agree": float(np.mean((p_cr > 0.5) == (p_rc < 0.5))),
          "mean_p_chosen": float(np.mean(both))}


class JudgeReward:
  """An RL / labelling reward source from a judge (`research/rlhf/rewards.py`'s
  interface): each response scores its mean P(win) against the other responses to
  the same prompt in the batch (round-robin within the group: the preferences
  stage's K samples, GRPO's group), or, for a prompt sampled once, against the
  reference response its record carries (`reference` or `chosen`)."""

  def __init__(self, judge: GenerativeJudge):
    self.judge = judge

  def __call__(self, rollouts, prompts, records=None) -> np.ndarray:
    texts = rollouts.texts
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
      groups.setdefault(repr(p), []).append(i)
    left, right, prompt_of, owner = [], [], [], []
    for rows in groups.values():
      if len(rows) > 1:
        for x in range(len(rows)):
          for y in range(x + 1, len(rows)):
            left.append(texts[rows[x]]); right.append(texts[rows[y]])
            prompt_of.append(prompts[rows[x]]); owner.append((rows[x], rows[y]))
      else:
        i = rows[0]
        record = (records or [None] * len(texts))[i] or {}
        reference = record.get("reference") or record.get("chosen")
        if not reference:
          raise ValueError(f"the judge reward compares responses to one prompt, but "
                           f"{record.get('where') or f'prompt {i}'} was sampled once and its "
                           f"record has no 'reference' (or 'chosen') response to judge against")
        left.append(texts[i]); right.append(reference); prompt_of.append(prompts[i])
        owner.append((i, None))
    p = self.judge.prefer(prompt_of, left, right) if left else np.zeros(0)
    total, count = np.zeros(len(texts)), np.zeros(len(texts))
    for (x, y), px in zip(owner, p):
      total[x] += px
      count[x] += 1
      if y is not None:
        total[y] += 1.0 - px
        count[y] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)
