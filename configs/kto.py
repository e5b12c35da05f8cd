"""KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable completions, starting
from (and regularised to) the SFT run. The DPO stage with the `kto` loss.

  python -m research.main --config=configs/kto.py --workdir=runs/kto \
      --config.data.source=unpaired.jsonl     # {prompt, completion, label} per line
  python -m research.main --config=configs/kto.py:tiny --config.init_from=runs/sft_tiny

With pairs or rankings as the source (the embedded set too), the better half of
each ranking is desirable and the worse half undesirable.
"""

import ml_collections

from configs import dpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = dpo.get_config(arg)
  c.objective.name = "kto"
  return c
