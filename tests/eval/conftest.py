"""Fixtures of the evaluation tests."""
import pytest


@pytest.fixture
def first_with_two_objects():
    """``first_with_two_objects(n, split="test")``: the first ``n`` samples of ``split`` with two or more
    objects, walking the split's seeds one by one (a reference independent of ShapesDataset and of the
    grounding code's own iteration)."""
    from dcam.zoo.data import generate_sample, split_seed

    def walk(n, split="test"):
        out, i = [], 0
        while len(out) < n:
            s = generate_sample(split_seed(split, i), 64)
            if len(s.objects) >= 2:
                out.append(s)
            i += 1
        return out
    return walk
