"""Prints samples from a trained run's language model.

  python -m research.generate --workdir=runs/sft --prompt="I watched" --prompt="The plot"
  python -m research.generate --workdir=runs/ppo --prompts_file=prompts.txt \
      --temperature=0.8 --top_p=0.9 --num_samples=3 --max_new_tokens=96
  python -m research.generate --workdir=runs/sft --prompts_file=many.txt --slots=64

Prompts come one per `--prompt` flag or one per line of `--prompts_file`; each
is preceded by the tokenizer's BOS. A prompt too long for the model's context with
`--max_new_tokens` is cut from the left (BOS kept), with a note on stderr. A user
error (no such run, no prompt) is one line on stderr and exit code 2. The model,
tokenizer and mesh are the run's own (`config.json`, its tokenizer,
`checkpoints/`): any stage's run, an RLHF policy or the last round of best-of-n
included.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import jax

from research import cli, continuous_batching, runs, sampling
from research.data import prompt_fit
from research.errors import ConfigError
from research.training import partitioning

_WORKDIR = flags.DEFINE_string("workdir", None, "workdir of a run", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt (repeatable)")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "a file with one prompt per line")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature")
_TOP_K = flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0: off)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus mass (1: off)")
_GREEDY = flags.DEFINE_bool("greedy", False, "argmax decoding")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "samples per prompt")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_SLOTS = flags.DEFINE_integer("slots", 0, "decode through this many KV-cache rows, each refilled "
                              "with the next prompt when its row ends (continuous batching); "
                              "0: every prompt in one batch")


def read_prompts() -> list[str]:
  prompts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    with open(_PROMPTS_FILE.value, encoding="utf-8") as f:
      prompts += [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ConfigError("give --prompt=... (repeatable) or --prompts_file=FILE")
  return prompts


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  with cli.user_errors():
    generate()


def generate() -> None:
  workdir = _WORKDIR.value
  if not os.path.isdir(workdir) or not os.path.exists(os.path.join(workdir, runs.CONFIG_FILE)):
    raise ConfigError(f"--workdir={workdir!r} is not the workdir of a run (no {runs.CONFIG_FILE})")
  path = runs.tokenizer_path(workdir)
  if path is None:
    raise ConfigError(f"--workdir={workdir!r} has no tokenizer: is it the workdir of a run?")
  for flag, value, ok in (("--max_new_tokens", _MAX_NEW.value, _MAX_NEW.value >= 1),
                          ("--num_samples", _NUM_SAMPLES.value, _NUM_SAMPLES.value >= 1),
                          ("--temperature", _TEMPERATURE.value, _TEMPERATURE.value > 0),
                          ("--top_p", _TOP_P.value, 0 < _TOP_P.value <= 1),
                          ("--slots", _SLOTS.value, _SLOTS.value >= 0)):
    if not ok:
      raise ConfigError(f"{flag}={value} is out of range")
  prompts = read_prompts()
  tok = runs.load_tokenizer(path)
  mesh, rules = partitioning.mesh_and_rules(runs.load_config(workdir))
  model, params = runs.load_policy(workdir, mesh, rules, step=_STEP.value)
  sampler = continuous_batching.sampler(model, eos_id=tok.stop_ids, pad_id=tok.pad_id,
                                        mesh=mesh, rules=rules, slots=_SLOTS.value)
  room = model.cfg.max_len - _MAX_NEW.value  # the sampler narrows its bucket to fit
  if room < 1:
    raise ConfigError(f"--max_new_tokens={_MAX_NEW.value} leaves no room for a prompt in the "
                      f"model's {model.cfg.max_len} positions (model.max_len)")
  encoded = []
  for p in prompts:
    ids, status = prompt_fit.fit(tok.prefix_ids + tok.encode(p), room, "truncate_left")
    if status == "truncated":
      print(f"note: the prompt {p[:40]!r}... is cut from the left to {room} tokens (model.max_len="
            f"{model.cfg.max_len} less --max_new_tokens={_MAX_NEW.value})", file=sys.stderr)
    encoded.append(ids)
  token_lists = [ids for ids in encoded for _ in range(_NUM_SAMPLES.value)]
  cfg = sampling.SamplingConfig(_MAX_NEW.value, temperature=_TEMPERATURE.value,
                                top_k=_TOP_K.value, top_p=_TOP_P.value, greedy=_GREEDY.value)
  out = jax.device_get(sampler(params, token_lists, jax.random.PRNGKey(_SEED.value), cfg))
  start = len(tok.prefix_ids)
  for i, tokens in enumerate(token_lists):
    ending = "" if out.ended[i] else " [truncated]"
    shown = prompts[i // _NUM_SAMPLES.value]
    shown = shown if len(shown) <= 80 else shown[:60] + "..." + shown[-17:]
    # Decoded together: a continuation decoded alone loses its leading space.
    print(f"--- {shown!r}\n{tok.decode([*tokens[start:], *out.tokens[i]])}{ending}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_any_flags)
