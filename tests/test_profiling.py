"""The stages of an explanation are named ranges in torch.profiler's record (dcam.profiling), as
many as the pipeline's structure says (counted here from the words, the chunk size and the views,
not from dcam), and the operators of a stage lie inside its range."""
import collections
import json
import math

import pytest
import torch

import dcam
from dcam.profiling import STAGES

RESPONSE = "a blue triangle and a green circle"  # 7 words of the bundled tokenizer


def profiled_explain(call):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = call()
    events = [e for e in prof.events() if e.name.startswith("dcam")]
    return out, events, collections.Counter(e.name for e in events)


def inside(event, ranges):
    return any(r.time_range.start <= event.time_range.start and event.time_range.end <= r.time_range.end
               for r in ranges)


@pytest.fixture(scope="module")
def toy():
    from dcam.testing import tiny_toy
    from dcam.zoo.data import generate_sample

    model, proc = tiny_toy()
    return model, proc, generate_sample((0, 2, 1), image_size=32, n_objects=2).image


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_one_forward_and_a_backward_per_chunk_of_words(toy, chunk):
    model, proc, image = toy
    exp = dcam.Explainer(model, proc, chunk_size=chunk)
    e, events, n = profiled_explain(lambda: exp.explain(image, response=RESPONSE))
    assert len(e) == 7
    chunks = math.ceil(7 / chunk)
    assert n["dcam.forward"] == 1 and n["dcam.generate"] == 0
    assert n["dcam.backward"] == chunks and n["dcam.reduce"] == chunks  # one view: each chunk reduced once
    assert n["dcam.maps"] == 1
    # the pooling of each chunk is inside its reduce range; the product and the refinement inside maps
    by = {s: [ev for ev in events if ev.name == s] for s in STAGES}
    pooled = [ev for ev in events if ev.name == "dcam::channel_weights"]
    assert len(pooled) == chunks and all(inside(ev, by["dcam.reduce"]) for ev in pooled)
    made = [ev for ev in events if ev.name in ("dcam::weighted_maps", "dcam::refine")]
    assert len(made) == 2 and all(inside(ev, by["dcam.maps"]) for ev in made)
    # the stages follow one another: no backward before the forward ends, no map before the last backward
    assert min(b.time_range.start for b in by["dcam.backward"]) >= by["dcam.forward"][0].time_range.end
    assert by["dcam.maps"][0].time_range.start >= max(b.time_range.end for b in by["dcam.backward"])


def test_a_generation_and_the_remask_probes_rows(toy):
    model, proc, image = toy
    exp = dcam.Explainer(model, proc, chunk_size=3)
    e, _, n = profiled_explain(lambda: exp.explain(image))
    assert n["dcam.generate"] == 1 and n["dcam.forward"] == 1
    assert n["dcam.backward"] == math.ceil(len(e) / 3)
    # remask: a forward (its rows: one per word, 3 at a time) and one backward per chunk of rows
    e, _, n = profiled_explain(lambda: exp.explain(image, response=RESPONSE, probe="remask"))
    assert n["dcam.forward"] == n["dcam.backward"] == math.ceil(7 / 3)


def test_a_batch_shares_its_forward(toy):
    model, proc, image = toy
    exp = dcam.Explainer(model, proc, chunk_size=4)
    # two examples of one layout: one forward; a backward serves both, chunk_size counting the two
    # examples' gradients (4 // 2 = 2 words a chunk); each example's chunks are reduced on their own
    es, _, n = profiled_explain(lambda: exp.explain_batch([image, image], responses=[RESPONSE, RESPONSE]))
    assert [len(e) for e in es] == [7, 7]
    assert n["dcam.forward"] == 1 and n["dcam.backward"] == math.ceil(7 / 2)
    assert n["dcam.reduce"] == 2 * math.ceil(7 / 2) and n["dcam.maps"] == 2


def test_the_stage_names_are_the_documented_ones():
    with pytest.raises(ValueError, match="unknown stage 'dcam.backwards'"):
        dcam.profiling.stage("dcam.backwards")
    doc = dcam.profiling.__doc__
    assert all(f"``{s}``" in doc for s in STAGES)


def test_the_readme_lists_every_stage_range():
    # the README's list lacked dcam.rows_check, which traces and `dcam explain --profile`'s line show
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("\nProfiling: "):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    assert set(re.findall(r"`(dcam\.[a-z_]+)`", paragraph)) == set(STAGES)


def test_a_trajectory_names_its_own_stages_inside_its_range(toy):
    model, proc, image = toy
    exp = dcam.Explainer(model, proc, chunk_size=4)
    e, events, n = profiled_explain(lambda: exp.explain(image, trajectory=True))
    traj = [ev for ev in events if ev.name == "dcam.trajectory"]
    assert len(traj) == 1
    within = collections.Counter(ev.name for ev in events if ev.name != "dcam.trajectory" and inside(ev, traj))
    # its generation, its maps of every step (one refine), and forwards and reductions of its step rows
    assert within["dcam.generate"] == 1 and within["dcam.maps"] == 1
    assert within["dcam.forward"] >= 1 and within["dcam.reduce"] >= 1
    # the finished response is explained once more after it: one generation in all (the trajectory's)
    assert n["dcam.generate"] == 1 and n["dcam.maps"] == within["dcam.maps"] + 1


class _Span:
    def __init__(self, name, start, end):
        self.name, self.time_range = name, type("R", (), {"start": start, "end": end})()


def test_each_stage_is_reported_by_its_own_time():
    from dcam.cli.profile import stage_seconds

    # a trajectory 0..100 us holding a forward 10..30 and a backward 40..70 that holds a reduce 50..60;
    # then a maps range 100..105 and another forward 110..111 (microseconds, as the profiler's events)
    spans = [_Span("dcam.trajectory", 0, 100), _Span("dcam.forward", 10, 30), _Span("dcam.backward", 40, 70),
             _Span("dcam.reduce", 50, 60), _Span("dcam.maps", 100, 105), _Span("dcam.forward", 110, 111),
             _Span("aten::mm", 12, 20)]
    got = stage_seconds(spans)
    want = {"dcam.forward": 21e-6, "dcam.backward": 20e-6, "dcam.reduce": 10e-6, "dcam.maps": 5e-6,
            "dcam.trajectory": 50e-6}
    assert list(got) == [s for s in STAGES if s in want]  # pipeline order
    assert got == pytest.approx(want, abs=1e-12)
    assert sum(got.values()) == pytest.approx(106e-6)  # the time the stages cover, counted once
