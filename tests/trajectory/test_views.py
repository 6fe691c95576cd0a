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


def test_all_views_follows_the_views_the_image_has_not_those_the_adapter_declares():
    # LaViDa without anyres ("pad") gives each image its base view alone, though the adapter declares
    # (highres, base): view="all" with a trajectory was refused "pick one of highres, base", and highres
    # then as a view the image has not
    import numpy as np
    import pytest

    from dcam import Explainer, InputError
    from dcam.testing import tiny_lavida_dream

    img = np.full((40, 90, 3), 200, np.uint8)
    exp = Explainer(*tiny_lavida_dream(seed=0, image_aspect_ratio="pad"))
    assert list(exp.adapter.prepare(img, None, None, 4).views) == ["base"]
    every = exp.explain(img, trajectory=True, view="all", steps=2, response_length=4)
    base = exp.explain(img, trajectory=True, view="base", steps=2, response_length=4)
    plain = exp.explain(img, response=every.response_ids, steps=every.steps, view="all")
    assert every.response_ids == base.response_ids and every.view == plain.view == "base"
    assert list(every.view_maps) == list(plain.view_maps) == ["base"]
    torch.testing.assert_close(every.trajectory.maps, base.trajectory.maps, atol=0, rtol=0)
    torch.testing.assert_close(every.trajectory.final_maps, base.trajectory.final_maps, atol=0, rtol=0)
    torch.testing.assert_close(every.maps, plain.maps, atol=0, rtol=0)
    # anyres: this 90 x 40 image has both views, each with tokens: still one at a time, naming them
    anyres = Explainer(*tiny_lavida_dream(seed=0))
    assert all(v.positions.numel() for v in anyres.adapter.prepare(img, None, None, 4).views.values())
    with pytest.raises(InputError, match=r"^view: a trajectory maps one image view at a time \(view='all' is not "
                                         r"supported\); pick one of highres, base$"):
        anyres.explain(img, trajectory=True, view="all", steps=2, response_length=4)


def test_the_ids_a_traced_generation_returns_are_checked_as_the_adapters(tiny_explainer, image, monkeypatch):
    # a traced generate() returning an id past the vocabulary was blamed on the user ("response: token id ...")
    import dataclasses

    import pytest

    from dcam.trajectory import explain_trajectory

    a = tiny_explainer.adapter
    real = a.generate

    def past_the_vocabulary(prep, steps=None, response_length=None, record=False):
        gen = real(prep, steps, response_length, record)
        return dataclasses.replace(gen, response_ids=list(gen.response_ids[:-1]) + [10 ** 6])

    monkeypatch.setattr(a, "generate", past_the_vocabulary)
    with pytest.raises(RuntimeError, match=r"^\w+\.generate\(\): in the response it returned, token id 1000000 is "
                                           r"not in the model's vocabulary"):
        explain_trajectory(tiny_explainer, image, steps=6)
