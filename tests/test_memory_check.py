"""The memory scaling script runs the sweep's probe per point in a subprocess and prints both ratios."""

import pytest

from runners import memory_check
from runners.measure import memory


@pytest.mark.skipif(not memory.cpu_peak_supported(), reason="needs Linux /proc/self/clear_refs")
def test_memory_check_prints_growth_of_both_measures(capsys):
    ratios = memory_check.main(["--variants", "full_math", "--seq-lens", "128", "512", "--batch", "2"])
    out = capsys.readouterr().out
    assert set(ratios) == {"full_math/peak_memory_mib", "full_math/process_peak_mib"}
    assert ratios["full_math/peak_memory_mib"] > 2.0  # 4x the length: the score matrices grow 16x
    assert "target >= 2.5" in out and "n=512" in out
