"""Trajectories on every family whose sampler exposes its steps (LaViDa with
both backbones, Dream-VL, Lumina-DiMOO), and a one-line refusal from the
others (LLaDA-V and MMaDA return only the answer; DiffusionGemma has no mask)."""
import pytest
import torch

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.trajectory import explain_trajectory

TRACED = ["lavida", "lavida-dream", "dream-vl", "lumina-dimoo"]


@pytest.mark.parametrize("family", TRACED)
def test_trajectory_of_each_family(models, landscape, family):
    model, proc = models(family)
    exp = Explainer(model, proc)
    assert exp.adapter.records_trajectory
    traj = explain_trajectory(exp, landscape, steps=4, response_length=8)
    S, Lr = traj.states.shape
    mask = exp.adapter.mask_token_id
    assert S == traj.steps >= 1 and Lr == 8
    assert bool((traj.states[0] == mask).all())  # every slot masked entering the first step
    for s in range(1, S):  # a committed slot keeps its token; every step commits something
        before, now = traj.states[s - 1], traj.states[s]
        assert bool((now[before != mask] == before[before != mask]).all()) and not torch.equal(before, now)
    # a slot committed during step d is masked in the states entering steps 0..d, and held after
    for slot, d in enumerate(traj.slot_decided_at.tolist()):
        column = (traj.states[:, slot] == mask).tolist()
        assert column == [True] * (d + 1) + [False] * (S - d - 1)
    assert traj.maps.shape[:2] == (S, len(traj.tokens)) and bool(torch.isfinite(traj.maps).all())
    # the first state is the masked probe of the finished response, computed by the explainer
    first = exp.explain(landscape, response=traj.response_ids, steps=traj.steps, probe="masked")
    assert first.tokens == traj.tokens
    torch.testing.assert_close(traj.maps[0], first.maps, atol=1e-5, rtol=0)


def test_steps_that_commit_nothing_are_no_steps_the_first_one_included():
    # worked by hand: a sampler history whose first step commits nothing kept that step as a state of
    # its own (S = 3, the first two states alike, decided_at one step late), while later such steps went
    from dcam.probe.adapters.dmllm import changed_steps, recorded_states

    M = 99
    history = [torch.tensor([M, M]), torch.tensor([M, M]), torch.tensor([M, 7]), torch.tensor([M, 7]),
               torch.tensor([5, 7])]
    states, decided_at = recorded_states(history, M)
    assert states.tolist() == [[M, M], [M, 7]] and decided_at.tolist() == [1, 0]
    assert changed_steps(history, M) == 2
    assert changed_steps([torch.tensor([M, M])], M) == 1  # nothing committed at all: one step, not zero


@pytest.mark.parametrize("family", ["lavida-dream", "dream-vl"])
def test_a_sampler_that_commits_nothing_at_first_records_only_its_real_steps(models, landscape, family):
    # 4 steps for 1 slot: the Dream samplers commit it at the last step and nothing before
    exp = Explainer(*models(family))
    traj = explain_trajectory(exp, landscape, steps=4, response_length=1)
    assert traj.states.shape == (1, 1) and traj.slot_decided_at.tolist() == [0]
    assert exp.explain(landscape, steps=4, response_length=1).steps == traj.steps == 1


@pytest.mark.parametrize("family", ["llada-v", "mmada", "diffusion-gemma"])
def test_families_without_recorded_steps_are_refused(models, landscape, family):
    from dcam.probe.adapters.families import TRAJECTORIES

    exp = Explainer(*models(family))
    with pytest.raises(InputError, match="trajectory") as err:
        explain_trajectory(exp, landscape, steps=4, response_length=8)
    text = str(err.value)
    # the refusal names the family `dcam families` lists (LLaDA-V's said "llava-dmllm", its adapter)
    # and gives the table's reason (DiffusionGemma's said "sampler", the table "no mask token")
    assert "\n" not in text and text.startswith(f"trajectory: the {family} model")
    assert ("mask token" in text) == ("mask" in TRAJECTORIES[family])


@pytest.mark.parametrize("family", ["lavida", "lavida-dream", "dream-vl", "lumina-dimoo", "llada-v", "mmada",
                                    "diffusion-gemma", "llava-next", "qwen-vl"])
def test_the_family_table_says_what_the_adapters_do(models, family):
    from dcam.probe.adapters.families import TRAJECTORIES

    exp = Explainer(*models(family))
    says_yes = TRAJECTORIES.get(exp.adapter.family, "no").startswith("yes")
    assert says_yes == bool(exp.adapter.records_trajectory and exp.adapter.mask_token_id is not None)


def test_trajectory_follows_the_view_asked_for(models, landscape, monkeypatch):
    # explain(trajectory=True, view=...) dropped view (an unknown one included); view="all" was
    # refused only once the whole generation had run
    model, proc = models("lavida-dream")
    exp = Explainer(model, proc)
    e = exp.explain(landscape, trajectory=True, steps=2, response_length=4, view="base")
    base = exp.explain(landscape, response=e.response_ids, steps=e.steps, view="base")
    assert e.view == "base" and e.maps.shape == base.maps.shape == (len(e.tokens), 2, 2)
    assert e.trajectory.maps.shape[2:] == (2, 2)
    torch.testing.assert_close(e.maps, base.maps, atol=0, rtol=0)
    monkeypatch.setattr(exp.adapter, "generate", lambda *a, **k: pytest.fail("generated before refusing"))
    with pytest.raises(InputError, match=r"^view: this model's images have no view 'nonsense'"):
        exp.explain(landscape, trajectory=True, view="nonsense")
    with pytest.raises(InputError, match=r"^view: a trajectory maps one image view at a time"):
        exp.explain(landscape, trajectory=True, view="all")
    with pytest.raises(InputError, match=r"^trajectory must be True or False, got 'no'$"):
        exp.explain(landscape, trajectory="no")



def test_view_default_with_a_trajectory_is_the_models_default_not_the_explainers(models, landscape):
    # explain(view="default", trajectory=True) on an Explainer(view="base") mapped the base view: "default"
    # became None there, which then meant the explainer's view
    model, proc = models("lavida-dream")
    e = Explainer(model, proc, view="base").explain(landscape, trajectory=True, steps=2, response_length=4,
                                                    view="default")
    plain = Explainer(model, proc).explain(landscape, trajectory=True, steps=2, response_length=4)
    assert e.view == plain.view == "highres" and e.response_ids == plain.response_ids
    torch.testing.assert_close(e.maps, plain.maps, atol=0, rtol=0)
    torch.testing.assert_close(e.trajectory.maps, plain.trajectory.maps, atol=0, rtol=0)


def test_steps_the_block_sampler_changed_are_noted_with_the_reason(models, landscape):
    # block_length=2 over 8 slots: 4 blocks, each taking the same number of steps (at least one), so
    # steps=1 became 4 with no note and steps=6 became 4 "as a step commits at least one token"
    model, proc = models("lumina-dimoo")
    exp = Explainer(model, proc, block_length=2)
    for asked in (1, 6):
        want = (f"steps: {asked} requested, the sampler used 4 (4 blocks of 2 slots take the same number of "
                "steps each, at least one: 4 in all)")
        tr = explain_trajectory(exp, landscape, steps=asked, response_length=8)
        assert tr.steps == 4 and want in tr.notes
        e = exp.explain(landscape, steps=asked, response_length=8)
        assert e.steps == 4 and want in e.notes


def test_shift_schedule_hand_worked():
    # LaViDa's schedule='shift' (shift 3): decided fraction 3t / (1 + 2t) over min(steps, masked) equal steps,
    # truncated, at least one per step, read backwards. 8 slots in 4 steps: t = 1/4, 1/2, 3/4, 1 give
    # 0.5, 0.75, 0.9, 1 -> 4, 6, 7, 8 slots -> 4, 2, 1, 1 -> [1, 1, 2, 4]. 4 in 4: 2, 3, 3.6, 4 -> 2, 1, 0, 1,
    # at least one: 2, 1, 1, 1 (one too many, taken from the first above one) -> [1, 1, 1, 1]. 10 in 3, in float32
    # as the release computes: 3t/(1+2t) at t = float32(1/3) is 0.59999997, so 5 (not 6), 8.57, 10 -> 5, 3, 2 ->
    # [2, 3, 5]. 2 in 5: two steps (1.5, 2 -> 1, 1), then three that commit nothing.
    from dcam.probe.adapters.sampling import transfer_schedule

    assert transfer_schedule(8, 4, "shift") == [1, 1, 2, 4]
    assert transfer_schedule(4, 4, "shift") == [1, 1, 1, 1]
    assert transfer_schedule(10, 3, "shift") == [2, 3, 5]
    assert transfer_schedule(2, 5, "shift") == [1, 1, 0, 0, 0]
    assert transfer_schedule(8, 4) == [2, 2, 2, 2]


def test_lavida_decodes_on_the_shift_schedule(models, landscape):
    # LaViDa's predict.py and the Diffusion-CAM release decode with schedule='shift'; dcam asked for the linear one,
    # so other words came out than the release's. 8 slots in 4 steps commit 1, 1, 2, 4 (hand-worked above)
    model, proc = models("lavida")
    tr = explain_trajectory(Explainer(model, proc), landscape, steps=4, response_length=8)
    assert torch.bincount(tr.slot_decided_at, minlength=4).tolist() == [1, 1, 2, 4]
