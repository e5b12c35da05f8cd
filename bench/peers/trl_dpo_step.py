"""Peer: one DPO training step with TRL's `DPOTrainer`, timed by a callback.

Runs in its own environment (torch, transformers, trl; see bench/peers/hf_generate.py):

  python bench/peers/trl_dpo_step.py --model_dir=DIR --batch=8 --seq_len=256 [--serve]
  python bench/peers/trl_dpo_step.py --model_dir=DIR --batch=16 --seq_len=512 --hh_like \
      [--padding_free]

The pairs are bench/batches.py's `dpo_pairs` (the project's bench/dpo.py uses the
same), written as text of one word per token id ("t17 t4031 ...") and read back
by a word-level tokenizer with id i for "ti", so TRL's tokenization yields
exactly those ids. Same work as the project's step: float32 (TRL defaults to
bf16 autocast), no gradient checkpointing (TRL defaults to it), sigmoid loss,
reference log-probs precomputed (`precompute_ref_log_probs`), AdamW, clipping at
1.0. With --hh_like the pairs are `hh_like_pairs` (uneven lengths; TRL pads each
batch to its longest row, or with --padding_free, where TRL supports it, packs
them). Reports the chosen responses' summed log-probs under the initial weights,
so the caller can check both sides score the same tokens. The trainer runs in
its own loop; a callback blocks at each step's start until a request arrives
(`--serve`) and answers with that step's time.
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import time

import datasets
import numpy
import tokenizers
import torch
import transformers
import trl

import serve  # bench/peers/serve.py, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batches  # pylint: disable=wrong-import-position  # bench/batches.py: numpy only


def word_tokenizer(vocab_size: int):
  """Token id i <-> the word "ti"; no special tokens added."""
  model = tokenizers.models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t3")
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{batches.EOS_ID}",
                                              pad_token="t0", unk_token="t3")


def words(ids) -> str:
  return " ".join(f"t{int(i)}" for i in ids)


def chosen_logps(model, rows, device: str) -> list[float]:
  """Sum of log p(token | prefix) over each chosen response, under `model`; rows:
  (prompt ids, chosen ids) per pair."""
  sums = []
  with torch.no_grad():
    for prompt, chosen in rows:
      ids = torch.tensor([list(prompt) + list(chosen)], dtype=torch.int64, device=device)
      logps = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
      token_lp = logps[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
      sums.append(float(token_lp[len(prompt) - 1:].sum()))
  return sums


def pair_ids(args, vocab: int) -> list[tuple]:
  """(prompt, chosen, rejected) ids of each pair: bench/batches.py's draws."""
  if not args.hh_like:
    pairs = batches.dpo_pairs(args.batch, args.seq_len, vocab, args.prompt_tokens, args.seed)
    p = args.prompt_tokens
    return [(t[0, :p], t[0, p:], t[1, p:]) for t in pairs]
  hh = batches.hh_like_pairs(numpy.random.default_rng(args.seed), args.batch, args.seq_len, vocab,
                             args.prompt_median, args.response_median, eos_id=batches.EOS_ID)
  out = []
  for tokens, mask, response in zip(hh["tokens"], hh["mask"], hh["response_mask"]):
    p = int(numpy.argmax(response[0]))
    out.append((tokens[0, :p], tokens[0, p:mask[0].sum()], tokens[1, p:mask[1].sum()]))
  return out


def main() -> None:
  parser = serve.parser(__doc__)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--prompt_tokens", type=int, default=32)
  parser.add_argument("--lr", type=float, default=1e-5)
  parser.add_argument("--beta", type=float, default=0.1)
  parser.add_argument("--steps", type=int, default=12,
                      help="batches in the dataset: more than the steps a caller asks for")
  parser.add_argument("--hh_like", action="store_true", help="uneven pairs (hh_like_pairs)")
  parser.add_argument("--prompt_median", type=int, default=40)
  parser.add_argument("--response_median", type=int, default=60)
  parser.add_argument("--padding_free", action="store_true")
  args = parser.parse_args()
  model, device = serve.load_model(args.model_dir, args.threads)
  vocab = model.config.vocab_size
  pairs = pair_ids(args, vocab)
  first_logps = chosen_logps(model, [(p, c) for p, c, _ in pairs], device)
  rows = {"prompt": [words(p) for p, _, _ in pairs],
          "chosen": [" " + words(c) for _, c, _ in pairs],
          "rejected": [" " + words(r) for _, _, r in pairs]}
  steps = args.steps  # the data repeat the one batch
  data = datasets.Dataset.from_dict({k: v * steps for k, v in rows.items()})

  requests, answers = queue.Queue(), queue.Queue()

  class Timer(transformers.TrainerCallback):
    """Blocks before each step until asked, then times the step."""

    def on_step_begin(self, *unused_args, **unused_kwargs):
      if requests.get() is None:
        raise SystemExit
      if device == "cuda":
        torch.cuda.synchronize()
      self.start = time.perf_counter()

    def on_step_end(self, *unused_args, **unused_kwargs):
      if device == "cuda":
        torch.cuda.synchronize()
      answers.put(time.perf_counter() - self.start)

  with tempfile.TemporaryDirectory() as out:
    config = trl.DPOConfig(
        output_dir=out, per_device_train_batch_size=args.batch, max_length=args.seq_len,
        learning_rate=args.lr, beta=args.beta, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, max_steps=steps, precompute_ref_log_probs=True, bf16=False,
        gradient_checkpointing=False, use_cpu=device == "cpu", report_to=[],
        save_strategy="no", logging_steps=steps, disable_tqdm=True, seed=args.seed,
        dataloader_drop_last=True, precompute_ref_batch_size=args.batch,
        padding_free=args.padding_free)
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=data,
                             processing_class=word_tokenizer(vocab), callbacks=[Timer()])
    threading.Thread(target=trainer.train, daemon=True).start()

    def step() -> dict:
      requests.put(True)
      return {"peer": "trl_dpo_step", "seconds": answers.get(timeout=600), "trl": trl.__version__,
              **serve.versions(device)}

    step()  # warm-up
    # TRL may turn padding_free off (1.16.0: "temporarily unavailable"): say so.
    serve.timed_answers(step, args.serve, {"first_chosen_logps": first_logps,
                                           "padding_free": bool(trainer.padding_free)})
    requests.put(None)


if __name__ == "__main__":
  main()
