"""The `remote` reward: a batch POSTed as JSON to `config.reward.remote_url`, scores back.

So a judge that does not fit beside the policy (an LLM judge, a large reward
model, a code-execution cluster) can live on another machine. The protocol,
which `python -m research.serve_reward` serves for any registered function or a
trained reward-model run:

  POST <url>   {"prompts": [...], "responses": [str, ...], "records": [{...}, ...]}
  200          {"scores": [float, ...]}  (one per response; optionally "metrics": {})

Each request waits `remote_timeout` seconds and is retried `remote_retries`
times with a growing pause on a connection error, a timeout or a 5xx answer;
then the run stops in one line naming the URL and what went wrong.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from research.errors import ConfigError, UserError
from research.rewards import register


class RemoteError(UserError):
  """The reward server could not be reached or answered wrongly."""


def post(url: str, payload: dict, *, timeout: float = 30.0, retries: int = 3,
         pause: float = 0.5) -> dict:
  """The JSON answer of `url` to `payload`, with retries (see the module doc)."""
  body = json.dumps(payload).encode("utf-8")
  problem = ""
  for attempt in range(retries + 1):
    if attempt:
      time.sleep(pause * 2 ** (attempt - 1))
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
      detail = e.read().decode("utf-8", "replace")[:300]
      problem = f"HTTP {e.code}: {detail}"
      if e.code < 500:  # the request is wrong: asking again will not help
        break
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
      problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    except json.JSONDecodeError as e:
      problem = f"the answer is not JSON ({e})"
      break
  raise RemoteError(f"reward server {url}: {problem} (after {attempt + 1} attempt(s); "
                    f"config.reward.remote_timeout / remote_retries)")


@register("remote", batched=True)
def remote_reward(prompts, responses, records, options=None):
  """One POST per batch -> (scores, metrics the server sent)."""
  url = options.get("remote_url", "") if options is not None else ""
  if not url:
    raise ConfigError("the 'remote' reward needs config.reward.remote_url (a server "
                      "speaking research/rewards/remote.py's protocol, e.g. "
                      "python -m research.serve_reward)")
  answer = post(url, {"prompts": list(prompts), "responses": list(responses),
                      "records": [dict(r) for r in records]},
                timeout=float(options.get("remote_timeout", 30.0)),
                retries=int(options.get("remote_retries", 3)))
  if not isinstance(answer, dict) or "scores" not in answer:
    raise RemoteError(f"reward server {url}: the answer has no 'scores' "
                      f"(got {str(answer)[:200]})")
  return answer["scores"], dict(answer.get("metrics") or {})
