"""Which examples share a batch (dcam.batching.similar_work): padded work, not item counts alone.
A short example batched with a long one was padded to the long one's length in the forward and
every backward (a 640x480 beside a 1920x1080 image: 1.55 s against 0.55 s apart, docs/RESULTS.md)."""
import math
import random

import pytest
import torch

from dcam.batching import WORK_SLACK, check_slack, similar_work
from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.testing import tiny_toy
from dcam.zoo.data import generate_sample


def _item_rule(index, counts, slack):
    """The partition explain_batch made before lengths counted (similar_item_counts, session 19), copied:
    in order of count, join while (largest count) x (examples) <= (1 + slack) x (their items)."""
    order = sorted(range(len(index)), key=lambda j: (counts[j], j))
    parts, cur, total = [], [], 0
    for j in order:
        if cur and counts[j] * (len(cur) + 1) > (1 + slack) * (total + counts[j]):
            parts.append(cur)
            cur, total = [], 0
        cur.append(j)
        total += counts[j]
    if cur:
        parts.append(cur)
    return [[index[j] for j in sorted(p)] for p in parts]


def test_item_counts_of_one_length_cut_where_the_zero_rows_would_cost_more_than_a_quarter():
    # (moved from tests/test_explain_sizes.py with the function, lengths now given: all equal)
    # worked by hand: six 7s cost 42 rows for 42 items; a first 11 would make it 11 x 7 = 77 rows for
    # 53 items (> 1.25 x 53 = 66.25): cut; two 11s cost 22 for 22
    idx = [10, 11, 12, 13, 14, 15, 16, 17]
    assert similar_work(idx, [50] * 8, [7, 7, 11, 7, 11, 7, 7, 7]) == [[10, 11, 13, 15, 16, 17], [12, 14]]
    # 1 then 7: 14 rows for 8 items (> 10): cut; 7 and 7 together
    assert similar_work([0, 1, 2], [9] * 3, [7, 1, 7]) == [[1], [0, 2]]
    # 4 and 5: 10 rows for 9 items (<= 11.25): one batch; then 6: 18 for 15 (<= 18.75): still one
    assert similar_work([0, 1, 2], [300] * 3, [6, 5, 4]) == [[0, 1, 2]]
    assert similar_work([3], [7], [9]) == [[3]] and similar_work([], [], []) == []


@pytest.mark.parametrize("slack", [WORK_SLACK, 0.0, 0.5])
def test_examples_of_one_length_are_cut_as_the_item_rule_cut_them(slack):
    """Families that do not pad batch one layout (one length) at a time: their partition is unchanged."""
    assert WORK_SLACK == 0.25
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        counts = [rng.randint(1, 14) for _ in range(n)]
        index = rng.sample(range(100), n)
        length = rng.choice([1, 17, 640, 7300])
        assert similar_work(index, [length] * n, counts, slack) == _item_rule(index, counts, slack), (counts, length)


def test_a_long_example_is_not_batched_with_short_ones():
    # worked by hand, 5 items each (work = length x (items + 1); waste allowed: 0.25 x length x items):
    # 100 and 100: 2 x 100 x 6 = 1200 for 1200 own: one batch; adding 1000: 3 x 1000 x 6 = 18000 against
    # 1200 + 6000 own, waste 10800 > 0.25 x (500 + 500 + 5000) = 1500: cut
    assert similar_work([0, 1, 2], [100, 100, 1000], [5, 5, 5]) == [[0, 1], [2]]
    # 100 and 120: 2 x 120 x 6 = 1440 against 600 + 720 = 1320, waste 120 <= 0.25 x 1100 = 275: one batch
    assert similar_work([0, 1], [120, 100], [5, 5]) == [[0, 1]]
    # 100 and 200: 2400 against 1800, waste 600 > 0.25 x 1500 = 375: cut (the shorter first)
    assert similar_work([0, 1], [200, 100], [5, 5]) == [[1], [0]]
    # lengths and items together: 100 (8 items) then 110 (2 items): 2 x 110 x 9 = 1980 against 900 + 330,
    # waste 750 > 0.25 x (800 + 220) = 255: cut, though the lengths alone (10%) would not cut
    assert similar_work([0, 1], [100, 110], [8, 2]) == [[0], [1]]
    assert similar_work([0, 1], [100, 110], [8, 8]) == [[0, 1]]


def test_each_batch_keeps_the_order_of_index():
    # index values are the examples' numbers, not positions: [7, 5] are the two short ones, in index order
    assert similar_work([7, 2, 5], [100, 1000, 100], [3, 3, 3]) == [[7, 5], [2]]
    assert similar_work([9, 4, 6, 1], [50, 50, 50, 50], [2, 2, 2, 2]) == [[9, 4, 6, 1]]
    assert similar_work([9, 4, 6, 1], [1000, 60, 1000, 50], [2, 2, 2, 2]) == [[4, 1], [9, 6]]


def test_a_batch_of_very_different_prompt_lengths_is_split_and_equals_one_at_a_time():
    """Two short prompts and one ~90 words longer, one response each of one word count: the item rule
    put all three in one padded forward (the short two padded to the long one's length through every
    backward); now the short two share one and the long one runs alone. Each example's maps are still
    explain()'s. Forwards are counted with a hook on the hooked block."""
    exp = Explainer(*tiny_toy(seed=1))
    samples = [generate_sample((0, 2, 10 + i), image_size=32, n_objects=2) for i in range(3)]
    images, caption = [s.image for s in samples], samples[0].caption
    prompts = [None, "what", "describe the image " * 30]
    responses = [caption] * 3
    lengths = [int(exp.adapter.prepare(im, p, exp.adapter.encode_response(caption)).input_ids.shape[-1])
               for im, p in zip(images, prompts)]
    assert lengths[0] != lengths[1] and lengths[2] > 2 * max(lengths[:2])  # the short two are padded too
    exp.explain_batch(images, prompts, responses)  # (the once-per-adapter padding and rows checks run here)
    seen = []
    h = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        batch = exp.explain_batch(images, prompts, responses)
    finally:
        h.remove()
    assert seen == [2, 1]  # [0, 1] padded together, then [2] alone (the item rule ran [3])
    for img, p, e in zip(images, prompts, batch):
        one = exp.explain(img, prompt=p, response=caption)
        assert e.tokens == one.tokens
        torch.testing.assert_close(e.maps, one.maps, atol=1e-5, rtol=0)
        torch.testing.assert_close(e.scores, one.scores, atol=1e-5, rtol=1e-5)


def test_bench_batch_lengths_refuses_a_batch_of_one(capsys):
    # --lengths gives every other image the long prompt: one image would have only a short one to compare
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_batch.py"
    spec = importlib.util.spec_from_file_location("bench_batch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--lengths", "--n", "1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --n must be 2 to 8 with --lengths (a short and a long prompt at least), got 1")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), True, "0.25", None])
def test_batch_slack_is_a_number_at_least_zero(bad):
    with pytest.raises(InputError, match=r"^batch_slack must be a number >= 0 \(math.inf: one batch\), got "):
        check_slack("batch_slack", bad)
    assert check_slack("batch_slack", 0) == 0.0 and check_slack("batch_slack", math.inf) == math.inf
