"""The project against the peer a user would pick instead, side by side in one run.

  python bench/compare.py --peer_python=/tmp/peers/bin/python --markdown   # small
  python bench/compare.py --peer_python=... --tasks=generate --shapes=64x256 --rounds=5
  python bench/compare.py --tunix_python=/tmp/tunix/bin/python --tasks=tunix_generate,ppo_iteration

Tasks: `generate` (Hugging Face `generate`), `clm_step` (a torch step),
`dpo_step` (TRL's DPOTrainer), `dpo_packed` (our packed DPO step against
TRL's on HH-like uneven pairs), `tunix_generate` (tunix's sampler) and
`ppo_iteration` (tunix's PPOLearner). The HF/torch/TRL peers run with
--peer_python, the tunix ones with --tunix_python (each its own environment).
Generation: this project's KV-cache sampler against the peer's on the same
weights (a randomly initialised preset exported with `research.convert`), the
same prompts (16 tokens), greedy, EOS off. Each round times the project once,
then the peer once (A B A B ...), both compiled / warmed beforehand; the
report is the median of each side and their ratio, plus whether both decoded
the same tokens. Prints JSON (and a markdown table with --markdown).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# The repository root, for `research` when run as `python bench/compare.py`.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import batches  # pylint: disable=wrong-import-position  # bench/batches.py, as the peers draw
from peak import measure_matmul_peak  # pylint: disable=wrong-import-position  # bench/
from research import convert, host_memory, sampling  # pylint: disable=wrong-import-position
from research.models import config as model_config  # pylint: disable=wrong-import-position
from research.models.decoder import Decoder  # pylint: disable=wrong-import-position

PEERS = os.path.join(ROOT, "bench", "peers")
TUNIX_TASKS = ("tunix_generate", "ppo_iteration")  # run with --tunix_python
# tunix 0.1.7's Llama3 applies RoPE with theta 1e6 whatever its config says
# (models/llama3/model.py: apply_rope's default, never passed), so the tunix
# tasks run the preset with that theta: the same function on both sides.
TUNIX_MODEL = {"rope_theta": 1_000_000.0}
KEPT_FREED_MEMORY = False  # set by main(): the peers then get the same allocator settings
GENERATION_TASKS = ("generate", "tunix_generate")


class PeerServer:
  """A bench/peers script in --serve mode: one timed run per request. It runs with
  this process's allocator settings (research/host_memory.py) when they apply."""

  def __init__(self, python: str, script: str, threads: int = 0, **flags):
    cmd = [python, os.path.join(PEERS, script), "--serve",
           *(f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items() if v is not False)]
    if threads:
      cmd.append(f"--threads={threads}")
    env = {**os.environ, **(host_memory.ENV if KEPT_FREED_MEMORY else {})}
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    ready = self.proc.stdout.readline()
    if not ready:
      raise RuntimeError(f"the peer did not start: {' '.join(cmd)}")
    self.ready = json.loads(ready)

  def run(self) -> dict:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def alternate(ours, peer: PeerServer, rounds: int) -> tuple[list[float], list[float], dict]:
  """A B A B ...: (our seconds, the peer's seconds, the peer's last answer)."""
  mine, theirs, info = [], [], {}
  for _ in range(rounds):
    mine.append(ours())
    info = peer.run()
    theirs.append(info["seconds"])
  return mine, theirs, info


def peer_versions(info: dict) -> dict:
  """The peer's name, versions, threads and device from its answer."""
  return {k: v for k, v in info.items()
          if k not in ("seconds", "tokens_per_sec", "tokens_sha1", "response_length")}


def export(preset: str, directory: str, **overrides):
  """A randomly initialised preset (with config `overrides`), and the same weights
  as a Hugging Face model."""
  cfg = model_config.DecoderConfig(**{**model_config.preset(preset), **overrides})
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])
  convert.write_hf_model(cfg, jax.device_get(params), directory)
  return cfg, model, params


def compare_generation(args, cfg, model, params, model_dir: str, batch: int,
                       new_tokens: int, peer_script: str = "hf_generate.py") -> dict:
  prompts = batches.prompts(batch, args.prompt_tokens, cfg.vocab_size, args.seed)
  lengths = np.full((batch,), args.prompt_tokens, np.int32)
  sampler = sampling.Sampler(model, eos_id=-1, pad_id=0, bucket=args.prompt_tokens,
                             segment=args.segment)
  sample_cfg = sampling.SamplingConfig(new_tokens, greedy=True)

  def ours() -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = sampler(params, prompts, jax.random.PRNGKey(0), sample_cfg, lengths=lengths)
    tokens = np.asarray(jax.block_until_ready(out.tokens))
    return time.perf_counter() - start, tokens

  start = time.perf_counter()
  _, tokens = ours()  # compile
  compile_s = time.perf_counter() - start
  python = args.tunix_python if peer_script.startswith("tunix") else args.peer_python
  peer = PeerServer(python, peer_script, args.threads, model_dir=model_dir,
                    batch=batch, prompt_tokens=args.prompt_tokens, new_tokens=new_tokens)
  try:
    mine, theirs, info = alternate(lambda: ours()[0], peer, args.rounds)
  finally:
    peer.close()
  ours_s, peer_s = statistics.median(mine), statistics.median(theirs)
  task = "tunix_generate" if peer_script.startswith("tunix") else "generate"
  return {"task": task, "batch": batch, "prompt_tokens": args.prompt_tokens,
          "new_tokens": new_tokens, "ours_s": ours_s, "peer_s": peer_s,
          "ours_tokens_per_sec": batch * new_tokens / ours_s,
          "peer_tokens_per_sec": batch * new_tokens / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "rounds": args.rounds,
          "ours_first_call_s": compile_s, "segment": args.segment,
          "ours_all_s": mine, "peer_all_s": theirs,
          "same_tokens": hashlib.sha1(tokens.tobytes()).hexdigest() == info["tokens_sha1"],
          "peer": peer_versions(info)}


def timed_step(train_step, state, batch):
  """A function that runs one step on the current state and returns its seconds."""
  holder = {"state": state}

  def run() -> float:
    start = time.perf_counter()
    holder["state"], metrics = train_step(holder["state"], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start
  return run


def alone_stats(seconds: list[float], tokens: int) -> dict:
  """Our step timed before the peer starts. With the peer's process merely alive
  (idle, even stopped) our CPU step measured 10-30% slower on the 2-core VM, so
  the alternating rounds (each side timed while the other's process is alive)
  are the like-for-like ratio and this is the step as a user runs it."""
  return {"ours_alone_s": statistics.median(seconds),
          "ours_alone_tokens_per_sec": tokens / statistics.median(seconds)}


def compare_clm_step(args, peak: float) -> dict:
  """Our CLM train step (bench/train_step.py, one device) against the same step in
  PyTorch (bench/peers/torch_clm_step.py) from the same initial weights and batch."""
  from train_step import make_step  # pylint: disable=g-import-not-at-top  # bench/ is on sys.path
  train_step, s, batch, model_cfg, config = make_step(args.preset, {"data": 1, "fsdp": 1,
                                                                     "tensor": 1})
  b, length = config.data.batch_size, config.data.seq_len
  with tempfile.TemporaryDirectory() as model_dir:
    convert.write_hf_model(model_cfg, jax.device_get(s.state.params), model_dir)
    state, metrics = train_step(s.state, batch)  # compile; the loss of the initial weights
    first_loss = float(metrics["nll"])  # the cross-entropy (loss adds z_loss)
    ours = timed_step(train_step, state, batch)
    ours()
    alone = [ours() for _ in range(args.rounds)]  # before the peer's process exists
    peer = PeerServer(args.peer_python, "torch_clm_step.py", args.threads, model_dir=model_dir,
                      batch=b, seq_len=length, lr=config.optimizer.lr)
    try:
      mine, theirs, info = alternate(ours, peer, args.rounds)
    finally:
      peer.close()
  ours_s, peer_s = statistics.median(mine), statistics.median(theirs)
  flops = model_cfg.flops_per_token(length) * b * length
  return {"task": "clm_step", "batch": b, "seq_len": length, "ours_s": ours_s, "peer_s": peer_s,
          "ours_tokens_per_sec": b * length / ours_s, "peer_tokens_per_sec": b * length / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "ours_mfu": flops / ours_s / peak,
          "peer_mfu": flops / peer_s / peak, "rounds": args.rounds, "ours_all_s": mine,
          "peer_all_s": theirs, **alone_stats(alone, b * length), "first_loss": first_loss,
          "peer_first_loss": peer.ready["first_loss"],
          "same_loss": abs(first_loss - peer.ready["first_loss"]) < 1e-3,
          "compilations": train_step.compilations(), "peer": peer_versions(info)}


def compare_dpo_step(args, peak: float) -> dict:
  """Our DPO step (bench/dpo.py, reference log-probs precomputed) against TRL's
  DPOTrainer (bench/peers/trl_dpo_step.py) on the same weights and pairs."""
  from dpo import PROMPT_TOKENS, make_dpo_step  # pylint: disable=g-import-not-at-top  # bench/
  train_step, state, batch, host_batch, _, model_cfg, config = make_dpo_step(args.preset)
  b, length = config.data.batch_size, config.data.seq_len
  chosen_logps = np.asarray(host_batch["ref_logps"])[:, 0]  # the initial weights' scores
  with tempfile.TemporaryDirectory() as model_dir:
    convert.write_hf_model(model_cfg, jax.device_get(state.params), model_dir)
    ours = timed_step(train_step, state, batch)
    ours()  # compile
    ours()
    alone = [ours() for _ in range(args.rounds)]  # before the peer's process exists
    peer = PeerServer(args.peer_python, "trl_dpo_step.py", args.threads, model_dir=model_dir,
                      batch=b, seq_len=length, prompt_tokens=PROMPT_TOKENS,
                      lr=config.optimizer.lr, beta=config.objective.beta,
                      steps=args.rounds + 3)
    try:
      mine, theirs, info = alternate(ours, peer, args.rounds)
    finally:
      peer.close()
  ours_s, peer_s = statistics.median(mine), statistics.median(theirs)
  tokens = 2 * b * length
  flops = model_cfg.flops_per_token(length) * tokens  # forward + backward of the policy
  peer_logps = np.asarray(peer.ready["first_chosen_logps"])
  return {"task": "dpo_step", "batch": b, "seq_len": length, "ours_s": ours_s, "peer_s": peer_s,
          "ours_tokens_per_sec": tokens / ours_s, "peer_tokens_per_sec": tokens / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "ours_mfu": flops / ours_s / peak,
          "peer_mfu": flops / peer_s / peak, "rounds": args.rounds, "ours_all_s": mine,
          "peer_all_s": theirs, **alone_stats(alone, tokens), "chosen_logps": chosen_logps.tolist(),
          "peer_chosen_logps": peer_logps.tolist(),
          "same_loss": bool(np.allclose(chosen_logps, peer_logps, rtol=1e-4)),
          "compilations": train_step.compilations(), "peer": {**peer_versions(info),
                                                              "trl": info["trl"]}}


def compare_dpo_packed(args, peak: float) -> dict:
  """DPO on uneven pairs (bench/batches.py `hh_like_pairs`, HH-like lengths): our
  step on packed rows (research/data/packing.py) against TRL's DPOTrainer on the
  same pairs and weights (TRL pads each batch to its longest row), with our
  padded step (pairs x 2 x seq_len) beside them; A B C rounds. TRL's
  `padding_free` is tried too and reported as TRL sets it (1.16.0 turns it off)."""
  from dpo import make_dpo_step  # pylint: disable=g-import-not-at-top  # bench/
  from research.data import packing  # pylint: disable=g-import-not-at-top
  from research.training import partitioning  # pylint: disable=g-import-not-at-top
  b, length = args.pairs, args.pair_len
  train_step, state, _, _, scorer, model_cfg, config = make_dpo_step(args.preset, batch_size=b,
                                                                     seq_len=length)
  host = batches.hh_like_pairs(np.random.default_rng(args.seed), b, length, model_cfg.vocab_size,
                               eos_id=batches.EOS_ID)
  host["ref_logps"] = scorer.pairs(host)  # the initial weights' scores
  lengths = packing.sequence_lengths(host)
  rows = packing.rows_needed(lengths, length)
  shard = lambda x: partitioning.shard_batch(x, scorer.mesh, scorer.rules)
  packed = timed_step(train_step, jax.tree.map(jnp.copy, state), shard(packing.pack(host, rows)))
  padded = timed_step(train_step, state, shard(host))
  flags = dict(model_dir="", batch=b, seq_len=length, lr=config.optimizer.lr,
               beta=config.objective.beta, steps=args.rounds + 3, hh_like=True)
  with tempfile.TemporaryDirectory() as model_dir:
    convert.write_hf_model(model_cfg, jax.device_get(scorer.params), model_dir)
    flags["model_dir"] = model_dir
    for fn in (packed, padded):
      fn(), fn()  # compile, warm up
    peer = PeerServer(args.peer_python, "trl_dpo_step.py", args.threads, **flags)
    mine, mine_padded, theirs = [], [], []
    try:
      for _ in range(args.rounds):
        mine.append(packed())
        mine_padded.append(padded())
        info = peer.run()
        theirs.append(info["seconds"])
    finally:
      peer.close()
    free = PeerServer(args.peer_python, "trl_dpo_step.py", args.threads, padding_free=True,
                      **flags)
    free.close()  # started only to learn whether TRL keeps padding_free on
  if free.ready["padding_free"]:
    raise NotImplementedError("this TRL keeps padding_free: time it (TRL 1.16.0 did not)")
  real = int(lengths.sum())
  ours_s, padded_s, peer_s = map(statistics.median, (mine, mine_padded, theirs))
  # Model FLOPs of the real sequences (each attends over its own length).
  flops = sum(model_cfg.flops_per_token(int(n)) * int(n) for n in lengths)
  peer_logps = np.asarray(peer.ready["first_chosen_logps"])
  return {"task": "dpo_packed", "batch": b, "seq_len": length, "real_tokens": real,
          "packed_rows": rows, "padded_rows": 2 * b, "ours_s": ours_s, "ours_padded_s": padded_s,
          "peer_s": peer_s, "ours_tokens_per_sec": real / ours_s,
          "ours_padded_tokens_per_sec": real / padded_s, "peer_tokens_per_sec": real / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "packed_vs_padded": padded_s / ours_s,
          "ours_mfu": flops / ours_s / peak, "peer_mfu": flops / peer_s / peak,
          "rounds": args.rounds, "ours_all_s": mine, "ours_padded_all_s": mine_padded,
          "peer_all_s": theirs,
          "same_loss": bool(np.allclose(host["ref_logps"][:, 0], peer_logps, rtol=1e-4)),
          "peer_padding_free": free.ready["padding_free"],
          "compilations": train_step.compilations(), "peer": {**peer_versions(info),
                                                              "trl": info["trl"]}}


def compare_ppo_iteration(args, critic: str) -> dict:
  """One PPO iteration (bench/ppo_iteration.py: rollout, scoring pass, one update of
  the policy and the critic) against tunix's PPOLearner (bench/peers/tunix_ppo.py,
  whose critic is separate) from the same weights and prompts."""
  from ppo_iteration import make_ppo_iteration  # pylint: disable=g-import-not-at-top  # bench/
  shape = dict(prompts=args.ppo_prompts, samples=args.ppo_samples,
               new_tokens=args.ppo_new_tokens, prompt_tokens=args.prompt_tokens)
  iteration, _ = make_ppo_iteration(args.preset, seed=args.seed, model_overrides=TUNIX_MODEL,
                                    critic=critic, **shape)
  iteration()  # compile
  iteration()
  alone = [iteration()["total_s"] for _ in range(args.rounds)]
  phases = []

  def ours() -> float:
    phases.append(iteration())
    return phases[-1]["total_s"]

  rows = args.ppo_prompts * args.ppo_samples
  with tempfile.TemporaryDirectory() as model_dir:
    export(args.preset, model_dir, **TUNIX_MODEL)
    peer = PeerServer(args.tunix_python, "tunix_ppo.py", args.threads, model_dir=model_dir,
                      seed=args.seed, **shape)
    try:
      mine, theirs, info = alternate(ours, peer, args.rounds)
    finally:
      peer.close()
  ours_s, peer_s = statistics.median(mine), statistics.median(theirs)
  tokens = rows * args.ppo_new_tokens
  lengths = [p["response_length"] for p in phases]
  return {"task": "ppo_iteration", **shape, "critic": critic, "rows": rows, "ours_s": ours_s,
          "peer_s": peer_s,
          "ours_tokens_per_sec": tokens / ours_s, "peer_tokens_per_sec": tokens / peer_s,
          "speedup_vs_peer": peer_s / ours_s, "rounds": args.rounds, "ours_all_s": mine,
          "peer_all_s": theirs, **alone_stats(alone, tokens),
          "ours_phases_median_s": {k: statistics.median(p[k] for p in phases)
                                   for k in ("generate_s", "score_s", "update_s")},
          "response_lengths": lengths, "peer_response_length": info["response_length"],
          "same_lengths": set(lengths) == {info["response_length"]} == {args.ppo_new_tokens},
          "compilations": iteration.compilations(), "peer": peer_versions(info)}


def _shape(r: dict) -> str:
  if r["task"] in ("generate", "tunix_generate"):
    return f"{r['batch']} x {r['new_tokens']} new tokens"
  if r["task"] == "ppo_iteration":
    return (f"{r['prompts']} prompts x {r['samples']} samples x {r['new_tokens']} tokens, "
            f"our critic {r['critic']}")
  if r["task"] == "dpo_packed":
    return (f"{r['batch']} HH-like pairs, {r['real_tokens']:,} tokens, {r['packed_rows']} packed "
            f"rows of {r['seq_len']} (MFU {r['ours_mfu']:.2f} vs {r['peer_mfu']:.2f})")
  pairs = "2 x " if r["task"] == "dpo_step" else ""
  return f"{r['batch']} x {pairs}{r['seq_len']} (MFU {r['ours_mfu']:.2f} vs {r['peer_mfu']:.2f})"


PEER_NAMES = {"generate": "HF generate", "tunix_generate": "tunix sampler",
              "clm_step": "torch step", "dpo_step": "TRL DPOTrainer",
              "dpo_packed": "TRL DPOTrainer (padded)",
              "ppo_iteration": "tunix PPOLearner"}


def _same(r: dict) -> str:
  if "same_tokens" in r:
    return "yes" if r["same_tokens"] else "no"
  if "same_loss" in r:
    return "yes" if r["same_loss"] else "no"
  return "lengths " + ("yes" if r["same_lengths"] else "no")  # sampled: nothing else compares


def markdown(rows: list[dict], device: str) -> str:
  lines = [f"Device: {device}", "",
           "| task | shape | ours | peer | ratio | same result |", "|---|---|---|---|---|---|"]
  for r in rows:
    unit = "tok/s" if r["task"] != "ppo_iteration" else "sampled tok/s"
    lines.append(f"| {r['task']} | {_shape(r)} | {r['ours_tokens_per_sec']:,.0f} {unit} | "
                 f"{PEER_NAMES[r['task']]} {r['peer_tokens_per_sec']:,.0f} | "
                 f"{r['speedup_vs_peer']:.2f}x | {_same(r)} |")
  return "\n".join(lines)


def generation_rows(tasks: list[str]) -> list[dict]:
  """The rows of `tasks` from this script run as a child without the allocator
  setting (the same flags otherwise)."""
  argv = [a for a in sys.argv[1:] if not a.startswith(("--tasks", "--markdown"))]
  out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                        f"--tasks={','.join(tasks)}"], check=True, stdout=subprocess.PIPE,
                       text=True, env={**os.environ, "RESEARCH_KEEP_FREED_MEMORY": "0"})
  return json.loads(out.stdout)["results"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peer_python", default="",
                      help="python of an environment with torch + transformers (+ trl)")
  parser.add_argument("--tunix_python", default="",
                      help="python of an environment with google-tunix")
  parser.add_argument("--preset", default="small")
  parser.add_argument("--tasks", default="generate,clm_step,dpo_step",
                      help=f"comma-separated, of {sorted(PEER_NAMES)}")
  parser.add_argument("--shapes", default="64x256,1x256",
                      help="generate: batch x new tokens, comma-separated")
  parser.add_argument("--prompt_tokens", type=int, default=16)
  parser.add_argument("--ppo_prompts", type=int, default=2)
  parser.add_argument("--ppo_samples", type=int, default=4, help="responses per prompt")
  parser.add_argument("--ppo_new_tokens", type=int, default=64)
  parser.add_argument("--ppo_critics", default="separate,shared",
                      help="our critic in the PPO rows: separate (like tunix's) and/or shared")
  parser.add_argument("--pairs", type=int, default=16, help="dpo_packed: pairs per batch")
  parser.add_argument("--pair_len", type=int, default=512, help="dpo_packed: longest row")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=0, help="the peer's torch threads")
  parser.add_argument("--segment", type=int, default=sampling.SEGMENT,
                      help="the sampler's decode segment (0: attend over the whole cache)")
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args()
  tasks = args.tasks.split(",")
  for task in tasks:
    python = args.tunix_python if task in TUNIX_TASKS else args.peer_python
    if task not in PEER_NAMES or not python:
      parser.error(f"task {task!r}: expected one of {sorted(PEER_NAMES)}, with "
                   f"{'--tunix_python' if task in TUNIX_TASKS else '--peer_python'}")
  rows = []
  generation = [t for t in tasks if t in GENERATION_TASKS]
  if generation and len(generation) < len(tasks):
    # Each kind as the project runs it: training keeps freed memory, generation
    # (research.generate, evaluation) does not; the generation rows come from a
    # child process of this script.
    rows = generation_rows(generation)
    tasks = [t for t in tasks if t not in GENERATION_TASKS]
  global KEPT_FREED_MEMORY
  if not generation or rows:  # training here: before JAX starts, as research.main does
    KEPT_FREED_MEMORY = host_memory.keep_freed_memory()
  dev = jax.devices()[0]
  device = f"{dev.platform} {dev.device_kind}, {os.cpu_count()} cores ({platform.node()})"
  peak = measure_matmul_peak(jax, jnp, jnp.float32 if dev.platform == "cpu" else jnp.bfloat16)
  for task in [t for t in GENERATION_TASKS if t in tasks]:
    with tempfile.TemporaryDirectory() as model_dir:
      tunix = task == "tunix_generate"
      cfg, model, params = export(args.preset, model_dir, **(TUNIX_MODEL if tunix else {}))
      for shape in args.shapes.split(","):
        batch, new_tokens = map(int, shape.split("x"))
        rows.append(compare_generation(args, cfg, model, params, model_dir, batch, new_tokens,
                                       "tunix_generate.py" if tunix else "hf_generate.py"))
        rows[-1]["kept_freed_memory"] = KEPT_FREED_MEMORY
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  for task, compare in (("clm_step", compare_clm_step), ("dpo_step", compare_dpo_step),
                        ("dpo_packed", compare_dpo_packed)):
    if task in tasks:
      rows.append({**compare(args, peak["flops_per_sec"]), "kept_freed_memory": KEPT_FREED_MEMORY})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  if "ppo_iteration" in tasks:
    for critic in args.ppo_critics.split(","):
      rows.append({**compare_ppo_iteration(args, critic), "kept_freed_memory": KEPT_FREED_MEMORY})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  # kept_freed_memory per row: research/host_memory.py's setting, on both sides.
  print(json.dumps({"benchmark": "compare", "preset": args.preset, "device": device,
                    "matmul_peak": peak, "results": rows}, indent=2))
  if args.markdown:
    print(markdown(rows, device))


if __name__ == "__main__":
  main()
