"""maps[s, t] is word t's Diffusion-CAM map on the state entering step s: the
state as it is while t's slot is masked there (masked words: one "full" probe
of that state), the state with t's slot masked again once committed (the
remask probe of that state). Checked against an independent explanation of
each state built from dcam.probe.probe and the reference operators."""
import dataclasses

import pytest
import torch

from dcam import Explainer
from dcam.ops import reference as R
from dcam.probe import probe
from dcam.trajectory import explain_trajectory


def repeat_ratio_by_hand(ids):
    counts = {i: ids.count(i) for i in ids}
    return sum(1 for c in counts.values() if c > 1) / len(ids)


def reading_logits(model, ids, pix, slot):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pix).logits[0, slot].float()


def independent_state_maps(explainer, image, traj, state):
    """Maps of every traced word on ``state`` (response slots [Lr]), from the
    probe and the reference pooling and refinement."""
    a, model, cfg = explainer.adapter, explainer.model, explainer.config
    prep = a.prepare(image, None, traj.response_ids)
    start, (h, w), mask = prep.response_start, prep.grid, a.mask_token_id
    ids = prep.input_ids.clone()
    ids[0, start:start + prep.response_length] = state
    on_state = dataclasses.replace(prep, input_ids=ids)
    slots, tids, T = traj.response_indices, traj.token_ids, len(traj.tokens)
    masked = [k for k in range(T) if int(state[slots[k]]) == mask]
    committed = [k for k in range(T) if k not in masked]
    raw, deg = torch.zeros(1, T, h, w), torch.zeros(1, T, dtype=torch.bool)
    if masked:
        r = probe(a, on_state, [start + slots[k] for k in masked], [tids[k] for k in masked], explainer.layer,
                  probe="full")
        m, d = R.pool_gradients_reference(r.acts, r.grads, h, w, cfg.grad_relu)
        raw[0, masked], deg[0, masked] = m[0], d[0]
    if committed:
        r = probe(a, on_state, [start + slots[k] for k in committed], [tids[k] for k in committed],
                  explainer.layer, probe="remask")
        m, d = R.pool_gradients_reference(r.acts, r.grads, h, w, cfg.grad_relu)
        raw[0, committed], deg[0, committed] = m[:, 0], d[:, 0]
    W = None
    if cfg.sicd == "context":  # W[g, k] = relu(logit of g's id at k's slot, in the row k is read from)
        pix = prep.model_inputs["pixel_values"]
        W = torch.zeros(1, T, T)
        for k in range(T):
            row = ids.clone()
            row[0, start + slots[k]] = mask
            logit = reading_logits(model, row, pix, start + slots[k])
            for g in range(T):
                if tids[g] != tids[k]:
                    W[0, g, k] = torch.relu(logit[tids[g]])
    explainable = [i for i in traj.response_ids if i not in a.skip_ids()]
    rho = repeat_ratio_by_hand(explainable)
    out = R.refine_reference(raw, deg, torch.tensor([float(traj.steps)]), torch.tensor([float(prep.image_height)]),
                             torch.tensor([rho]), None, W, **cfg.op_args())
    return out[0][0]


@pytest.mark.parametrize("s", [0, 2, 5])
def test_bundled_maps_equal_independent_explanations(bundled_explainer, bundled_traj, shapes_image, s):
    t = bundled_traj
    assert t.maps.shape == (6, len(t.tokens), 16, 16) and t.maps.dtype == torch.float32
    expect = independent_state_maps(bundled_explainer, shapes_image, t, t.states[s])
    torch.testing.assert_close(t.maps[s], expect, atol=1e-5, rtol=0)
    # which words were read from remask rows: those whose slot holds a token in that state
    assert t.remasked[s].tolist() == [int(t.states[s, i]) != 3 for i in t.response_indices]


def test_bundled_final_maps_are_the_remask_probe_of_the_response(bundled_explainer, bundled_traj, shapes_image):
    t = bundled_traj
    finished = torch.tensor(t.response_ids)
    torch.testing.assert_close(t.final_maps, independent_state_maps(bundled_explainer, shapes_image, t, finished),
                               atol=1e-5, rtol=0)
    decision = torch.stack([t.maps[int(t.decided_at[k]), k] for k in range(len(t.tokens))])
    assert torch.equal(t.decision_maps, decision)


def test_context_debiasing_reads_each_word_from_its_own_row(bundled, shapes_image):
    """sicd="context": the weights come from the logits at each word's slot in
    the row that word was read from (the state, or the state with it remasked)."""
    model, proc = bundled
    exp = Explainer(model, proc, config=dataclasses.replace(Explainer(model, proc).config, sicd="context"))
    t = explain_trajectory(exp, shapes_image, steps=3)
    assert bool(t.stats["sicd_alpha"].gt(0).any())  # the context term acts somewhere
    for s in (1, 2):
        torch.testing.assert_close(t.maps[s], independent_state_maps(exp, shapes_image, t, t.states[s]),
                                   atol=1e-4, rtol=0)


def test_one_step_is_the_masked_probe(tiny_explainer, image):
    t = explain_trajectory(tiny_explainer, image, steps=1)
    e = tiny_explainer.explain(image, probe="masked", steps=1)
    assert t.steps == 1 and t.response_ids == e.response_ids
    assert bool((t.states == tiny_explainer.adapter.mask_token_id).all()) and not bool(t.decided_at.any())
    torch.testing.assert_close(t.maps[0], e.maps, atol=0, rtol=0)
    remask = tiny_explainer.explain(image, response=t.response_ids, probe="remask", steps=1)
    torch.testing.assert_close(t.final_maps, remask.maps, atol=1e-6, rtol=0)


def test_a_phrase_is_traced_as_one_item(bundled_explainer, bundled_traj, shapes_image):
    """A two-word phrase is one item: its score sums its tokens' logits, it is
    read from the state only while both slots are masked, and it is decided
    when its last piece is."""
    t = bundled_traj
    phrase = f"{t.tokens[1]} {t.tokens[2]}"
    p = explain_trajectory(bundled_explainer, shapes_image, steps=6, targets=phrase)
    assert len(p.tokens) == 1 and p.pieces[0] == t.response_indices[1:3]
    assert int(p.decided_at[0]) == int(t.decided_at[1:3].max())
    a, (h, w) = bundled_explainer.adapter, (16, 16)
    prep = a.prepare(shapes_image, None, p.response_ids)
    start, mask = prep.response_start, a.mask_token_id
    explainable = [i for i in p.response_ids if i not in a.skip_ids()]
    pos = [start + i for i in p.pieces[0]]
    tids = [p.response_ids[i] for i in p.pieces[0]]
    for s in range(p.steps):
        ids = prep.input_ids.clone()
        ids[0, start:start + prep.response_length] = p.states[s]
        for q in pos:  # the item's slots masked (already masked ones stay masked)
            ids[0, q] = mask
        r = probe(a, dataclasses.replace(prep, input_ids=ids), pos, tids, bundled_explainer.layer, probe="full",
                  groups=[[0, 1]])
        raw, deg = R.pool_gradients_reference(r.acts, r.grads, h, w, bundled_explainer.config.grad_relu)
        out = R.refine_reference(raw, deg, torch.tensor([6.0]), torch.tensor([64.0]),
                                 torch.tensor([repeat_ratio_by_hand(explainable)]), None, None,
                                 **bundled_explainer.config.op_args())
        torch.testing.assert_close(p.maps[s, 0], out[0][0, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_batching_does_not_change_the_maps(bundled_explainer, bundled_traj, shapes_image, chunk_size):
    """One row per forward, or five: the same maps as the default batches (16)."""
    t = explain_trajectory(bundled_explainer, shapes_image, steps=6, chunk_size=chunk_size)
    assert t.cost["rows"] == bundled_traj.cost["rows"] and t.cost["forwards"] > bundled_traj.cost["forwards"]
    torch.testing.assert_close(t.maps, bundled_traj.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(t.final_maps, bundled_traj.final_maps, atol=1e-5, rtol=0)


def test_a_memory_budget_sets_the_batches(bundled, bundled_traj, shapes_image):
    t = explain_trajectory(Explainer(*bundled, memory_budget="200MB"), shapes_image, steps=6)
    torch.testing.assert_close(t.maps, bundled_traj.maps, atol=1e-5, rtol=0)
