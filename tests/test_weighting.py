import math

import pytest

from momentumgs.config import load_config
from momentumgs.errors import ConfigError
from momentumgs.train.weighting import BlockQuality, BlockWeighting, block_weight, block_weights


def test_block_weight_matches_hand_computed_values():
    # leader: weight exactly 1
    assert block_weight(25.0, 0.8, 25.0, 0.8, sigma=10.0) == 1.0
    # 2 dB and 0.05 SSIM behind, sigma 10: d2 = 4 + 0.25 = 4.25 -> 2 - exp(-4.25 / 200)
    assert block_weight(23.0, 0.75, 25.0, 0.8, sigma=10.0) == pytest.approx(2 - math.exp(-0.02125), abs=1e-12)
    assert block_weight(23.0, 0.75, 25.0, 0.8, sigma=10.0) == pytest.approx(1.021025, abs=1e-6)
    # far behind: the weight tends to 2; a smaller sigma weighs the same gap more
    assert block_weight(5.0, 0.1, 25.0, 0.8, sigma=10.0) == pytest.approx(2 - math.exp(-449 / 200))
    assert block_weight(23.0, 0.75, 25.0, 0.8, sigma=5.0) > block_weight(23.0, 0.75, 25.0, 0.8, sigma=10.0)


def test_quality_ema_and_weights_over_blocks():
    q = BlockQuality()
    assert not q.measured
    q.update(20.0, 0.5)  # the first measurement is taken as it is
    assert (q.psnr, q.ssim) == (20.0, 0.5)
    q.update(30.0, 1.0)
    assert q.psnr == pytest.approx(0.9 * 20 + 0.1 * 30) and q.ssim == pytest.approx(0.55)

    leader, lagging, unmeasured = BlockQuality(26.0, 0.85), BlockQuality(22.0, 0.7), BlockQuality()
    w = block_weights([leader, lagging, unmeasured], sigma=10.0)
    assert w[0] == 1.0 and w[2] == 1.0
    assert w[1] == pytest.approx(2 - math.exp(-(16 + 2.25) / 200))
    assert block_weights([BlockQuality(), BlockQuality()], 10.0) == [1.0, 1.0]


def test_step_metrics_average_the_steps_since_the_last_take():
    from momentumgs.train.weighting import StepMetrics

    m = StepMetrics()
    assert m.take_mean() is None
    for psnr, ssim in ((20.0, 0.5), (22.0, 0.7), (math.inf, 1.0)):  # a perfect render is left out
        m.add(psnr, ssim)
    assert m.take_mean() == pytest.approx((21.0, 0.6))
    assert m.take_mean() is None  # reset


def test_latest_smoothing_is_the_latest_measurement():
    """`method.weighting.smoothing: latest`, the Momentum-GS code's: its EMA steps every iteration toward the
    latest measurement (0.9 old + 0.1 new), so after a few dozen iterations it is that measurement."""
    q = BlockQuality()
    for psnr, ssim in [(20.0, 0.5), (30.0, 1.0), (25.0, 0.7)]:
        q.update(psnr, ssim, "latest")
        assert (q.psnr, q.ssim) == (psnr, ssim)
    # the code's per-iteration EMA over one 500-iteration slot after a measurement: the same value
    code_psnr = 20.0
    for _ in range(500):
        code_psnr = 0.9 * code_psnr + 0.1 * 30.0
    assert code_psnr == pytest.approx(30.0, abs=1e-12)
    with pytest.raises(ConfigError, match="method.weighting.smoothing: expected one of ema, latest"):
        load_config(None, ["method.weighting.smoothing=iteration"])  # the schema checks the choice


def _weighting(n_blocks: int, **options) -> BlockWeighting:
    from momentumgs.config import WeightingConfig
    from momentumgs.train.comm import LocalComm

    cfg = WeightingConfig(**{"source": "steps", "every": 2, **options})
    return BlockWeighting(cfg, n_blocks, list(range(n_blocks)), LocalComm(1), None, [], [{}] * n_blocks)


def test_block_weighting_measures_when_due_and_its_state_round_trips():
    from momentumgs.train.block import StepResult
    from momentumgs.train.slots import SlotSchedule

    weighting, schedule = _weighting(2), SlotSchedule(2, 1, 1, 4)  # one worker: blocks 0, 1, 0, 1, ...
    psnr = {0: 30.0, 1: 20.0}
    while not schedule.finished:
        measuring = weighting.measuring(schedule)
        b = schedule.current(0)
        assert measuring == ({b} if (schedule.done_iterations[b] + 1) % 2 == 0 else set())
        result = StepResult(0.0, 0.0, 0.9, psnr[b], 0.0, 0, 0, True)
        weighting.after_step(b, None, result, None, b in measuring)
        if measuring:
            weighting.sync()
        schedule.advance()
    assert weighting.weight(0) == 1.0 and weighting.weight(1) == pytest.approx(2 - math.exp(-100 / 200))
    restored = _weighting(2)
    restored.load_state_dict(weighting.state_dict())
    assert restored.weights == weighting.weights and restored.qualities == weighting.qualities


def test_block_weighting_is_neutral_with_one_block_or_when_off():
    from momentumgs.train.slots import SlotSchedule

    for weighting, n in ((_weighting(1), 1), (_weighting(3, enabled=False), 3)):
        assert not weighting.enabled
        assert weighting.measuring(SlotSchedule(n, 1, 1, 4)) == set()
        assert [weighting.weight(b) for b in range(n)] == [1.0] * n
