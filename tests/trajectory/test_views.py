"""view="all" on a model with one view: that view, with a trajectory as without one
(it was refused: "a trajectory maps one image view at a time ... pick a view", with none
other to pick). A model with several views keeps the refusal (tests/families/test_trajectories.py)."""
import torch


def test_all_views_of_a_single_view_model_is_its_one_view(tiny_explainer, traj, image):
    from dcam.trajectory import explain_trajectory

    every = explain_trajectory(tiny_explainer, image, steps=6, view="all")
    assert every.response_ids == traj.response_ids and every.grid == traj.grid
    torch.testing.assert_close(every.maps, traj.maps, atol=0, rtol=0)
    torch.testing.assert_close(every.final_maps, traj.final_maps, atol=0, rtol=0)
    e = tiny_explainer.explain(image, trajectory=True, steps=6, view="all")
    plain = tiny_explainer.explain(image, response=traj.response_ids, steps=traj.steps, view="all")
    # the toy's one view has no name: none reported, no per-view maps (as view="all" without a trajectory)
    assert e.view is None and plain.view is None and e.view_maps == plain.view_maps == {}
    torch.testing.assert_close(e.maps, plain.maps, atol=0, rtol=0)
    torch.testing.assert_close(e.trajectory.maps, traj.maps, atol=0, rtol=0)
