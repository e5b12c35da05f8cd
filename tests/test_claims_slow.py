"""The paper claims that hold at the tiny size (experiments/claims.md), rerun on two
seeds: each comparison must still point the paper's way (the mean difference, not
the verdict: two seeds give no spread worth the name). A change that breaks a
method's behaviour fails here. Slow: each claim trains its arms from scratch."""

import pytest

from experiments import claims, claims_report, runner

pytestmark = pytest.mark.slow

HOLDING = ()  # filled from the measured table: the claims whose verdict is "holds"


@pytest.mark.parametrize("name", HOLDING)
def test_claim_points_the_papers_way(name, tmp_path):
  exp = claims.experiment("tiny", str(tmp_path), only=name, seeds=(0, 1))
  rows = runner.run(exp, str(tmp_path))
  [result] = claims_report.write(rows, str(tmp_path), [claims.CLAIMS[name]], (0, 1))
  assert result["margins"] and all(m > 0 for m in result["margins"]), result["comparisons"]
