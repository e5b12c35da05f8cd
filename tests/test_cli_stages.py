"""Every stage from the command line, as a researcher runs it, on Anthropic HH-style
data in TRL's layouts whose longest prompts exceed the model's max_len
(tests/fixtures/hh_pairs.jsonl.gz): SFT on the chosen replies as TRL's
conversational prompt-completion, a reward model and DPO on the implicit-prompt pairs, evaluate with the
policy run's defaults, generate; RL, best-of-n and preferences under `-m slow`.
Each exits 0, says what it made of the data, and reports the long prompts it cut."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.devices import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "tests", "fixtures", "hh_pairs.jsonl.gz")
DATA = (f"--config.data.source={HH}", "--config.data.holdout_every=10")
SHORT = ("--config.train.steps=6", "--config.train.checkpoint_every=6")  # wiring, not learning


def main(*args, module="research.main"):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, proc.stderr


def summary(workdir):
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def hh_messages(text):
  """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> TRL messages."""
  turns = re.split(r"\n\n(Human|Assistant): ", text)[1:]
  roles = {"Human": "user", "Assistant": "assistant"}
  return [{"role": roles[who], "content": said} for who, said in zip(turns[::2], turns[1::2])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """CLM (smoke) -> SFT on the chosen replies -> a reward model on the pairs."""
  root = tmp_path_factory.mktemp("cli_stages")
  sft_file = root / "hh_chat.jsonl"
  with gzip.open(HH, "rt") as f, open(sft_file, "w", encoding="utf-8") as out:
    for line in f:
      turns = hh_messages(json.loads(line)["chosen"])
      out.write(json.dumps({"prompt": turns[:-1], "completion": turns[-1:]}) + "\n")
  w = {name: str(root / name) for name in ("clm", "sft", "rm")}
  main("--config=configs/clm.py:smoke", f"--workdir={w['clm']}", "--config.sample.num_samples=0",
       *SHORT)
  _, err = main("--config=configs/sft.py:smoke", f"--workdir={w['sft']}", *SHORT,
                f"--config.init_from={w['clm']}", f"--config.data.source={sft_file}",
                "--config.data.holdout_every=10", "--config.data.template=chat",
                "--config.generate.num_examples=4")
  s = summary(w["sft"])["data"]
  assert s["train"]["truncated"] > 0 and s["train"]["records"] == 90
  assert "every 10th record of" in s["holdout"] and "data: train: 90 read" in err
  _, err = main("--config=configs/reward.py:smoke", f"--workdir={w['rm']}", *SHORT,
                f"--config.init_from={w['sft']}", *DATA, "--config.data.template=chat")
  assert "with the prompt cut from the left" in err
  assert summary(w["rm"])["data"]["validation"]["examples"] == 10
  return w


def test_dpo_then_evaluate_and_generate_on_long_prompts(runs, tmp_path):
  dpo = str(tmp_path / "dpo")
  _, err = main("--config=configs/dpo.py:smoke", f"--workdir={dpo}", *DATA, *SHORT,
                f"--config.init_from={runs['sft']}", "--config.data.template=chat",
                f"--config.evaluate.reward_model={runs['rm']}")
  s = summary(dpo)
  assert s["data"]["train pairs"]["truncated"] > 0 and "data: validation pairs: 10 read" in err
  assert s["policy"]["prompts"]["truncated"] > 0  # the crash: prompt bucket 528 > max_len 512
  assert s["policy"]["win_rate_judge"] == "reward_model"
  # evaluate: the policy run's reference, data and template unless told otherwise
  out, err = main("--config=configs/evaluate.py:smoke", f"--workdir={tmp_path / 'eval'}",
                  f"--config.policy={dpo}", f"--config.evaluate.reward_model={runs['rm']}")
  e = summary(tmp_path / "eval")
  assert e["reference"] == runs["sft"] and e["data"] == {"source": HH, "template": "chat"}
  assert e["prompts"]["truncated"] > 0 and "policy/reward_model" in e
  assert not any("ground_truth" in k for k in e)  # not the embedded movie scorer
  assert out.count("\n---\n") >= 1 and " >>> " in out  # the samples, printed
  out, err = main(f"--workdir={dpo}", "--prompt=" + "Tell me about the film. " * 200,
                  "--max_new_tokens=8", module="research.generate")
  # All the room the model has (512 - 8), not the bucket below it (496) as before.
  assert "is cut from the left to 504 tokens" in err and out.startswith("--- ")


@pytest.mark.slow
def test_rl_best_of_n_and_preferences_on_long_prompts(runs, tmp_path):
  _, err = main("--config=configs/grpo.py:smoke", f"--workdir={tmp_path / 'grpo'}", *DATA,
                f"--config.init_from={runs['sft']}", "--config.data.template=chat",
                "--config.reward.source=model", f"--config.reward.model={runs['rm']}",
                "--config.rollout.max_new_tokens=32")
  s = summary(tmp_path / "grpo")
  assert s["prompts"]["truncated"] > 0 and s["policy"]["prompts"]["truncated"] > 0
  assert "data: training prompts: 90 read -> 90 kept" in err
  main("--config=configs/best_of_n.py:smoke", f"--workdir={tmp_path / 'bon'}", *DATA,
       f"--config.init_from={runs['sft']}", "--config.data.template=chat",
       f"--config.reward.model={runs['rm']}", "--config.best_of_n.max_new_tokens=32")
  assert summary(tmp_path / "bon")["prompts"]["truncated"] > 0
  main("--config=configs/preferences.py:smoke", f"--workdir={tmp_path / 'prefs'}", *DATA,
       f"--config.init_from={runs['sft']}", "--config.data.template=chat",
       "--config.reward.source=model", f"--config.reward.model={runs['rm']}",
       "--config.preferences.max_new_tokens=32", "--config.preferences.require_eos=False")
  p = summary(tmp_path / "prefs")
  assert p["prompt_fit"]["truncated"] > 0 and p["kept_prompts"] == p["prompts"]
  main("--config=configs/evaluate.py:smoke", f"--workdir={tmp_path / 'bon_eval'}",
       f"--config.policy={tmp_path / 'bon'}", "--config.evaluate.best_of_n=4",
       f"--config.evaluate.reward_model={runs['rm']}")
  assert summary(tmp_path / "bon_eval")["prompts"]["truncated"] > 0


@pytest.mark.slow
def test_serve_reward_serves_a_reward_model(runs):
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from research.rewards import remote  # pylint: disable=g-import-not-at-top
  from research.serve_reward import ModelScorer  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT}
  proc = subprocess.Popen([sys.executable, "-m", "research.serve_reward",
                           f"--reward_model={runs['rm']}", f"--port={port}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    batch = {"prompts": ["Can you tell me about the film Salt Harbor?"] * 2,
             "responses": ["A quiet, luminous film.", "No idea."], "records": [{}, {}]}
    deadline, answer = time.time() + 120, None
    while answer is None and time.time() < deadline:
      try:
        answer = remote.post(f"http://127.0.0.1:{port}/", batch, retries=0)
      except remote.RemoteError:
        time.sleep(1)
    assert answer is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
    local = ModelScorer(runs["rm"])(batch["prompts"], batch["responses"], batch["records"])[0]
    np.testing.assert_allclose(answer["scores"], local, rtol=1e-5)
  finally:
    proc.terminate()
    proc.wait(timeout=30)
