"""The README's commands on a researcher's own files: SFT on TRL prompt-completion
conversations, a reward model and DPO on TRL implicit-prompt preference pairs,
each from the CLI; a bad file ends in one line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from configs import common
from research.data import instructions, preferences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(*args):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", "research.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


def summary(workdir):
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def errors(stderr):
  return [l for l in stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "I0", "W0"))
          and not l.startswith("data:")]


@pytest.fixture(scope="module")
def trl_pairs(tmp_path_factory):
  """The embedded preference pairs in TRL's conversational implicit-prompt layout."""
  path = tmp_path_factory.mktemp("trl") / "pairs.jsonl"
  records = preferences.embedded(common.preference_data(corpus_size=600), "train")
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      if r["ranks"][0] == r["ranks"][1]:  # a tie is no preference
        continue
      user = [{"role": "user", "content": r["prompt"]}]
      best, worst = sorted(r["responses"], key=lambda x: r["ranks"][r["responses"].index(x)])
      f.write(json.dumps({"chosen": user + [{"role": "assistant", "content": best}],
                          "rejected": user + [{"role": "assistant", "content": worst}]}) + "\n")
  return str(path)


@pytest.mark.slow  # ~60 s; the CLI's wiring on TRL pairs is also tests/test_cli_stages.py's
def test_reward_model_and_dpo_train_on_trl_pairs_from_the_cli(tiny_sft, trl_pairs, tmp_path):
  rm = str(tmp_path / "rm")
  code, _, err = main("--config=configs/reward.py:tiny", f"--workdir={rm}",
                      f"--config.init_from={tiny_sft}", f"--config.data.source={trl_pairs}",
                      "--config.train.steps=60", "--config.train.eval_every=60",
                      "--config.mesh.num_devices=1")
  assert code == 0, err[-3000:]
  s = summary(rm)
  assert s["eval"]["accuracy"] > 0.6 and s["eval"]["loss"] < s["eval_at_start"]["loss"]
  dpo = str(tmp_path / "dpo")
  code, _, err = main("--config=configs/dpo.py:tiny", f"--workdir={dpo}",
                      f"--config.init_from={tiny_sft}", f"--config.data.source={trl_pairs}",
                      "--config.train.steps=30", "--config.train.eval_every=30",
                      "--config.evaluate.num_prompts=8", "--config.evaluate.samples_per_prompt=1",
                      f"--config.evaluate.reward_model={rm}", "--config.mesh.num_devices=1")
  assert code == 0, err[-3000:]
  s = summary(dpo)
  assert s["eval"]["rewards/margins"] > 0.05 and s["eval"]["rewards/accuracies"] > 0.6
  policy = s["policy"]  # the user's data: judged by the reward model, not the movie scorer
  assert policy["win_rate_judge"] == "reward_model" and "policy/reward_model" in policy
  assert not any("ground_truth" in k for k in policy)


def test_sft_on_trl_prompt_completion_conversations_from_the_cli(tiny_base, tmp_path):
  path = tmp_path / "sft.jsonl"
  records = instructions.embedded(common.data(corpus_size=400), "train")
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps({"prompt": [{"role": "user", "content": r["instruction"] + "\n\n"
                                      + r["input"]}],
                          "completion": [{"role": "assistant", "content": r["output"]}]}) + "\n")
  workdir = str(tmp_path / "sft")
  code, _, err = main("--config=configs/sft.py:smoke", f"--workdir={workdir}",
                      f"--config.init_from={tiny_base}", f"--config.data.source={path}",
                      "--config.data.template=chat", "--config.mesh.num_devices=1")
  assert code == 0, err[-3000:]
  s = summary(workdir)
  assert "exact_match" in s["generate"]["tuned"]  # the reference answers, no 'task' needed
  assert s["data"]["train"]["examples"] == len(records) - len(records) // 20 - 1 or \
      s["data"]["train"]["examples"] > 300


def test_a_bad_data_file_is_one_line_and_exit_code_2(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_bytes(b'{"text": "fine"}\n{"text": null}\n')
  code, _, err = main("--config=configs/clm.py:smoke", f"--workdir={tmp_path / 'w'}",
                      f"--config.data.source={path}")
  assert code == 2
  assert errors(err) == [f"error: {path}:2: field 'text' is null; expected a string"], err[-2000:]
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
