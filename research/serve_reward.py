"""Serves a reward over HTTP on the `remote` reward's protocol (research/rewards/remote.py).

  python -m research.serve_reward --functions="math:1.0,format:0.1" --port=8321
  python -m research.serve_reward --reward_model=runs/reward --port=8321
  python -m research.serve_reward --judge=runs/judge_sft --question="Which review is more positive?"

  POST /        {"prompts": [...], "responses": [...], "records": [...]}
             -> {"scores": [...], "metrics": {...}}
  GET /health   {"ok": true, "serving": "..."}

With `--functions`, any registered reward functions (`--imports` for a module
that registers more); with `--reward_model`, a trained reward-model run scoring
each prompt (rendered with that run's template) followed by the response,
normalised as in RL; with `--judge`, a language-model run asked "A or B?" in both
orders (research/rlhf/judge.py): each response scores its mean P(win) against the
batch's other responses to its prompt, or against its record's `reference`
(RLAIF with the judge on another machine). A bad request is answered 400 with the reason; the server
keeps serving. It listens on 127.0.0.1 unless --host says otherwise: serving
`code` on an open address runs strangers' programs (in the sandbox, but still). Requests are handled one at a time (a reward model keeps one
compiled function; the checkers' timeouts need the main thread).
"""

from __future__ import annotations

import http.server
import importlib
import json
import logging
import sys

from absl import app, flags
import numpy as np

from research import cli
from research.errors import UserError

_FUNCTIONS = flags.DEFINE_string("functions", "", "reward functions, e.g. 'math:1.0,format:0.1'")
_REWARD_MODEL = flags.DEFINE_string("reward_model", "", "a reward-model workdir to serve instead")
_JUDGE = flags.DEFINE_string("judge", "", "a language-model run to serve as a pairwise judge")
_QUESTION = flags.DEFINE_string("question", "Which response is better?",
                                "the judge's question (with --judge)")
_IMPORTS = flags.DEFINE_string("imports", "", "modules that register reward functions, a,b")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "address to listen on")
_PORT = flags.DEFINE_integer("port", 8321, "port to listen on (0: any free one, printed)")
_OPTIONS = flags.DEFINE_string("options", "{}", "the functions' options as JSON, e.g. "
                               "'{\"math_tolerance\": 1e-6}' (config.reward's keys)")


class ModelScorer:
  """A reward-model run as a batched text scorer (prompt + response -> score)."""

  def __init__(self, workdir: str):
    from research import runs  # pylint: disable=g-import-not-at-top  # JAX only when needed
    from research.reward_fn import RewardFunction  # pylint: disable=g-import-not-at-top
    self.config = runs.load_config(workdir)
    self.tok = runs.load_tokenizer(runs.tokenizer_path(workdir) or workdir)
    self.rm = RewardFunction.load(workdir)

  def __call__(self, prompts, responses, records):
    from research.data import templates  # pylint: disable=g-import-not-at-top
    del records
    template = self.config.data.get("template", "alpaca")
    rows = [templates.prompt_ids(p, template, self.tok) + templates.reply_ids(r, template, self.tok)
            for p, r in zip(prompts, responses)]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
      tokens[i, :len(row)], mask[i, :len(row)] = row, True
    return [float(s) for s in self.rm(tokens, mask)], {}


class JudgeScorer:
  """A generative judge's pairwise preferences as scores (`judge.JudgeReward`)."""

  def __init__(self, workdir: str, question: str):
    from research.rlhf import judge  # pylint: disable=g-import-not-at-top  # JAX only when needed
    self.reward = judge.JudgeReward(judge.GenerativeJudge.load(workdir, question=question))

  def __call__(self, prompts, responses, records):
    import types  # pylint: disable=g-import-not-at-top
    try:
      scores = self.reward(types.SimpleNamespace(texts=list(responses)), prompts, records)
    except ValueError as e:  # a prompt with one response and no reference
      raise UserError(str(e)) from None
    return [float(s) for s in scores], {}


def make_scorer(functions: str, reward_model: str, options: dict, judge: str = "",
                question: str = ""):
  """(scorer(prompts, responses, records) -> (scores, metrics), what it serves)."""
  if sum(map(bool, (functions, reward_model, judge))) != 1:
    raise UserError("give exactly one of --functions=NAME:WEIGHT,..., --reward_model=DIR or "
                    "--judge=DIR")
  if reward_model:
    return ModelScorer(reward_model), f"reward model {reward_model}"
  if judge:
    return JudgeScorer(judge, question), f"judge {judge} ({question!r})"
  from research.rewards.scoring import FunctionReward  # pylint: disable=g-import-not-at-top
  reward = FunctionReward(functions, options)

  def score(prompts, responses, records):
    scored = reward.score(prompts, responses, records)
    # The client logs these as reward/<name>: send each function's name alone.
    metrics = {k[len("reward/"):]: v for k, v in scored.metrics.items() if k.startswith("reward/")}
    return [float(s) for s in scored.total], metrics
  return score, f"reward functions {functions}"


def handler(scorer, serving: str):
  class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code: int, payload: dict) -> None:
      body = json.dumps(payload).encode("utf-8")
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") == "/health":
        self._send(200, {"ok": True, "serving": serving})
      else:
        self._send(404, {"error": "GET /health, or POST / a batch"})

    def do_POST(self):  # pylint: disable=invalid-name
      try:
        length = int(self.headers.get("Content-Length", 0))
        batch = json.loads(self.rfile.read(length).decode("utf-8"))
        responses = batch["responses"]
        prompts = batch.get("prompts") or [""] * len(responses)
        records = batch.get("records") or [{} for _ in responses]
        if not (len(prompts) == len(records) == len(responses)):
          raise ValueError("prompts, responses and records differ in length")
      except (ValueError, KeyError, TypeError) as e:
        self._send(400, {"error": f"a batch is {{prompts, responses, records}}: {e}"})
        return
      try:
        scores, metrics = scorer(prompts, responses, records)
      except UserError as e:  # the request or the server's settings: asking again won't help
        self._send(422, {"error": str(e)})
        return
      except Exception as e:  # pylint: disable=broad-except  # the server keeps serving
        logging.exception("scoring failed")
        self._send(500, {"error": f"{type(e).__name__}: {e}"})
        return
      self._send(200, {"scores": scores, "metrics": metrics})

    def log_message(self, fmt, *args):  # one line per request, to stderr
      logging.info("%s %s", self.address_string(), fmt % args)
  return Handler


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  with cli.user_errors():
    for module in filter(None, (m.strip() for m in _IMPORTS.value.split(","))):
      importlib.import_module(module)
    try:
      options = json.loads(_OPTIONS.value)
    except json.JSONDecodeError as e:
      raise UserError(f"--options is not JSON ({e})") from None
    scorer, serving = make_scorer(_FUNCTIONS.value, _REWARD_MODEL.value, options, _JUDGE.value,
                                  _QUESTION.value)
    server = http.server.HTTPServer((_HOST.value, _PORT.value), handler(scorer, serving))
  print(f"serving {serving} on http://{_HOST.value}:{server.server_port}/", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_any_flags)
