"""The recorded states are the sampler's: an independent replay of greedy
low-confidence remasking, step by step, gives the same states entering every
step, the same response and the same step of every commit."""
import pytest
import torch

from dcam.trajectory import explain_trajectory


def replay(model, adapter, image, steps):
    """Greedy low-confidence remasking written out: (states entering each step
    [S, Lr], response [Lr], step each slot was committed [Lr])."""
    cfg = model.config
    prep = adapter.prepare(image)
    start, Lr = prep.response_start, prep.response_length
    x = prep.input_ids.clone()
    x[0, start:] = cfg.mask_token_id
    pix = prep.model_inputs["pixel_values"]
    per_step = [Lr // steps + (1 if i < Lr % steps else 0) for i in range(steps)]
    banned = [cfg.pad_token_id, cfg.bos_token_id, cfg.mask_token_id, cfg.image_token_id]
    states, committed_at = [], torch.full((Lr,), -1)
    for step, k in enumerate(per_step):
        if k == 0:
            continue
        states.append(x[0, start:].clone())
        with torch.no_grad():
            logits = model(input_ids=x, pixel_values=pix).logits[0, start:].float()
        logits[:, banned] = float("-inf")
        conf, pred = logits.softmax(-1).max(-1)
        still = [i for i in range(Lr) if int(x[0, start + i]) == cfg.mask_token_id]
        chosen = sorted(still, key=lambda i: (-float(conf[i]), i))[:k]  # most confident, ties: leftmost
        for i in chosen:
            x[0, start + i] = pred[i]
            committed_at[i] = len(states) - 1
    return torch.stack(states), x[0, start:].clone(), committed_at


def bundled_traj_adapter(bundled):
    from dcam.probe import auto_adapter

    return auto_adapter(*bundled)


def test_bundled_states_equal_a_replay(bundled, bundled_traj, shapes_image):
    model, _ = bundled
    states, response, committed_at = replay(model, bundled_traj_adapter(bundled), shapes_image, 6)
    assert torch.equal(bundled_traj.states, states)
    assert bundled_traj.response_ids == response.tolist()
    assert torch.equal(bundled_traj.slot_decided_at, committed_at)
    # per word: the step its slot was committed at; the commit order follows it
    words = bundled_traj.response_indices
    assert bundled_traj.decided_at.tolist() == [int(committed_at[i]) for i in words]
    expect_order = sorted(range(len(words)), key=lambda k: (int(committed_at[words[k]]), words[k]))
    assert bundled_traj.commit_order == [bundled_traj.word_numbers[k] for k in expect_order]
    for s, numbers in enumerate(bundled_traj.committed_per_step):
        assert numbers == [bundled_traj.word_numbers[k] for k in expect_order if int(committed_at[words[k]]) == s]


def test_uneven_schedule_replay_on_a_tiny_model(tiny, tiny_explainer, image):
    """12 slots over 5 steps: 3, 3, 2, 2, 2 commits."""
    model, _ = tiny
    t = explain_trajectory(tiny_explainer, image, steps=5)
    states, response, committed_at = replay(model, tiny_explainer.adapter, image, 5)
    assert t.steps == 5 and torch.equal(t.states, states) and t.response_ids == response.tolist()
    assert torch.equal(t.slot_decided_at, committed_at)
    assert torch.bincount(committed_at, minlength=5).tolist() == [3, 3, 2, 2, 2]


def test_more_steps_than_slots_records_the_steps_used(tiny_explainer, image):
    """20 steps requested for 12 slots: the sampler commits one slot in each of
    its first 12 steps and nothing after; S = 12 states are recorded."""
    t = explain_trajectory(tiny_explainer, image, steps=20)
    assert t.steps == 12 and t.states.shape == (12, 12)
    assert sorted(t.slot_decided_at.tolist()) == list(range(12))
    assert any("20 requested" in n for n in t.notes)


def test_recording_does_not_change_what_is_generated(bundled, shapes_image):
    a = bundled_traj_adapter(bundled)
    prep = a.prepare(shapes_image)
    plain, recorded = a.generate(prep, 6), a.generate(prep, 6, record=True)
    assert plain.response_ids == recorded.response_ids and plain.steps == recorded.steps == 6
    assert plain.states is None and recorded.states.dtype == torch.long and recorded.decided_at.dtype == torch.long


def test_an_adapters_decision_steps_outside_the_steps_are_named(tiny_explainer, image):
    # decided_at past the last step (or negative) was an IndexError deep in the per-word numbers
    a = tiny_explainer.adapter
    generate = a.generate

    def late(*args, **kw):
        g = generate(*args, **kw)
        g.decided_at = g.decided_at + 10
        return g
    a.generate = late
    try:
        with pytest.raises(RuntimeError, match=r"adapter recorded decided_at \[.*\]: each slot's step must lie in "
                                               r"0\.\.3$"):
            explain_trajectory(tiny_explainer, image, steps=4)
    finally:
        del a.generate
