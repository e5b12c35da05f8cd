"""What the training stages do the same way: the objective, the trainer build, the loop.

Reading and writing workdirs (config, tokenizer, parameters) is `research/runs.py`.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn

from research.training import trainer


def train(config, workdir: str, module: nn.Module, *, train_iter, eval_batches,
          hooks=(), tokens_per_batch: int = 0, init_params: Callable | None = None,
          init_subtree: str | None = None, rows_per_example: int = 1):
  """The registered objective (`config.objective.name`) -> one trainer build -> the loop.

  `eval_batches=None` trains without held-out evaluation. `rows_per_example`: the
  sequences of one example (K responses of a comparison).

  Returns (LoopResult, Trainer)."""
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.training import loop  # pylint: disable=g-import-not-at-top
  loss = functools.partial(objectives.get(config.objective.name), model=module, config=config)
  built = trainer.build(config, module, loss, init_params=init_params, init_subtree=init_subtree,
                        rows=config.data.batch_size * rows_per_example,
                        evaluate=eval_batches is not None)
  result = loop.run(built, loop.IteratorSource(train_iter), train_cfg=config.train,
                    workdir=workdir, eval_batches=eval_batches,
                    tokens_per_batch=tokens_per_batch, hooks=hooks)
  return result, built
