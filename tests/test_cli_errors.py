"""Every user error exits 2 with one line on stderr, whatever it is: a flag, a config
file, a value, a data file, a workdir, a run named by the config, a tokenizer, the
checkpoints. Nothing a refused rerun touches changes, and the run still loads."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

from research import runs

# One worker runs these, so the finished run they share is trained once.
pytestmark = pytest.mark.xdist_group("cli_errors")
from tests.devices import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(module, *args):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr


def message_lines(stderr):
  """stderr without absl's log lines (Lmmdd ...) and the progress bar."""
  return [l for l in stderr.splitlines() if l.strip() and not (
      l[:1] in "IWE" and l[1:5].isdigit()) and not l.startswith(("data:", "\r"))]


SMOKE = "--config=configs/clm.py:smoke"
RUN = (SMOKE, "--config.train.steps=6", "--config.train.checkpoint_every=3",
       "--config.sample.num_samples=0")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished smoke CLM run (6 steps), copied by the tests that change it."""
  workdir = str(tmp_path_factory.mktemp("cli_errors") / "clm")
  code, err = cli("research.main", *RUN, f"--workdir={workdir}")
  assert code == 0, err[-3000:]
  return workdir


def copy_of(run, tmp_path):
  target = str(tmp_path / "copy")
  shutil.copytree(run, target)
  return target


# (arguments, a fragment of the one error line); {run}: a finished CLM run, {copy}: a copy.
CASES = [
    (("--config=configs/clm.py:tiny", "--config.optimizer.lrr=1"),
     "config.optimizer has no key 'lrr'; valid keys: b1, b2"),
    ((SMOKE, "--config.train.steps=many"), "--config.train.steps=many"),
    ((SMOKE, "--workdir={tmp}/w", "--config.train.steps=3"),
     "config.optimizer.warmup_steps=4 must be below the number of training steps"),
    (("--config=configs/clm.py:nope",), "config argument 'nope': expected a run size"),
    (("--config=configs/nope.py",), "--config=configs/nope.py: no such file"),
    (("--config=README.md",), "README.md is not a config file"),
    (("--config=configs/dpo.py:smoke", "--config.data.field_map.answer=x"),
     "config.data.field_map has no key 'answer'; valid keys: chosen, completion, label, margin, "
     "prompt"),
    ((SMOKE, "--workdir="), "--workdir is empty"),
    ((SMOKE, "--workdir=README.md"), "--workdir='README.md' is a file"),
    ((SMOKE, "--workdir=README.md/run"), "README.md/run"),
    ((SMOKE, "--workdir={tmp}/v", "--config.model.vocab_size=10"),
     "config.model.vocab_size=10 is too small for this text"),
    ((SMOKE, "--workdir={tmp}/s", "--config.data.seq_len=100000"),
     "config.data.seq_len=100000 must be at most config.model.max_len=512"),
    ((SMOKE, "--dry_run", "--config.data.seq_len=100000"),  # checked as the stage checks it
     "config.data.seq_len=100000 must be at most config.model.max_len=512"),
    ((SMOKE, "--workdir={tmp}/m", "--config.data.seq_len=100000", "--config.model.max_len=100000"),
     "a train step needs at least"),
    ((SMOKE, "--workdir={tmp}/t", "--config.data.tokenizer_path=README.md"),
     "README.md: not a readable SentencePiece model"),
    ((SMOKE, "--workdir={tmp}/d", "--config.data.tokenizer_path=configs"),
     "configs is not a tokenizer: it has no tokenizer.json"),
    (("--config=configs/rlhf.py:smoke", "--workdir={tmp}/r", "--config.init_from={run}",
      "--config.reward.model={run}"), "is a clm run, not a reward-model run"),
    (("--config=configs/sft.py:smoke", "--workdir={tmp}/o", "--config.init_from={run}",
      "--config.model.num_layers=3"),
     "--config.model.num_layers=3 (the run has 2): config.init_from="),
    (("--config=configs/evaluate.py:smoke", "--workdir={tmp}/e", "--config.policy={tmp}/none"),
     "is not the workdir of a run"),
    (("--config=configs/sft.py:smoke", "--workdir={run}", "--config.init_from={run}"),
     "stage: {run} holds a clm run and config.stage='sft'"),
]


@pytest.mark.parametrize("args,fragment", CASES, ids=[str(i) for i in range(len(CASES))])
def test_user_errors_exit_2_with_one_line(run, tmp_path, args, fragment):
  fill = lambda s: s.format(run=run, tmp=tmp_path)
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(run, "**"), recursive=True)}
  code, err = cli("research.main", *map(fill, args))
  lines = message_lines(err)
  assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  assert fill(fragment) in lines[0], lines[0]
  assert "Traceback" not in err
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(run, "**"), recursive=True)}
  assert after == before  # the run named by the refused command is untouched


def test_a_damaged_tokenizer_or_checkpoints_exit_2_and_keep_the_files(run, tmp_path):
  broken = copy_of(run, tmp_path)
  path = os.path.join(broken, runs.TOKENIZER_FILE)
  with open(path, "r+b") as f:
    f.truncate(100)
  code, err = cli("research.main", *RUN, f"--workdir={broken}")
  assert code == 2 and message_lines(err) == [
      f"error: {path}: not a readable SentencePiece model (truncated, or another kind of file); "
      f"give a tokenizer.model or a Hugging Face tokenizer folder, or delete it to train one "
      f"anew"], err[-3000:]
  shutil.copy(os.path.join(run, runs.TOKENIZER_FILE), path)
  for f in glob.glob(os.path.join(broken, "checkpoints", "*", "**", "*"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as out:
        out.write(b"\0garbage")
  code, err = cli("research.main", *RUN, f"--workdir={broken}")
  lines = message_lines(err)
  assert code == 2 and len(lines) == 1, err[-3000:]
  assert "no checkpoint in" in lines[0] and "nothing was moved or deleted" in lines[0]
  assert sorted(os.listdir(os.path.join(broken, "checkpoints"))) == ["3", "6"]


def test_generate_names_its_user_errors(run, tmp_path):
  code, err = cli("research.generate", f"--workdir={tmp_path}/none", "--prompt=x")
  assert code == 2 and message_lines(err) == [
      f"error: --workdir='{tmp_path}/none' is not the workdir of a run (no config.json)"], err
  code, err = cli("research.generate", f"--workdir={run}")
  assert code == 2 and message_lines(err) == [
      "error: give --prompt=... (repeatable) or --prompts_file=FILE"], err
  code, err = cli("research.generate")
  assert code == 2 and "--workdir" in message_lines(err)[0], err


@pytest.mark.parametrize("args,fragment", [
    (("--to_hf={tmp}/out", "--workdir={tmp}/no_run"), "no_run/config.json not found"),
    (("--from_hf={tmp}", "--workdir={tmp}/w"), "is not a Hugging Face checkpoint"),
])
def test_convert_user_errors_are_one_line_and_exit_2(tmp_path, args, fragment):
  """A run that does not exist used to end export in a traceback, exit 1."""
  code, err = cli("research.convert", *(a.format(tmp=tmp_path) for a in args))
  lines = message_lines(err)
  assert code == 2 and len(lines) == 1 and fragment in lines[0], err[-2000:]
