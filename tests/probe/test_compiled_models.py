"""Models with ``torch.compile``'d parts are probed with their compiled code run eagerly
(:mod:`dcam.probe.compiled`). A compiled backward takes no batched cotangents and no second
backward, so explaining a model the user had compiled ended in torch's "compiled with non-empty
donated buffers" from the per-word fallback; and the compiler's stance, which is process-wide,
was set per forward with ``with set_stance(...)``: two explanations that overlapped in two threads
left the whole process in ``force_eager``."""
import threading
import warnings

import numpy as np
import torch
from PIL import Image
from torch._dynamo import eval_frame

from dcam.explain import Explainer
from dcam.probe.compiled import compiled_code_eager, has_compiled_parts
from dcam.testing.llava_dmllm import tiny_llada_v

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8))


def _stance():
    return eval_frame._stance.stance


def test_overlapping_holders_in_two_threads_keep_the_stance_until_the_last_leaves():
    # A enters, B enters, A leaves (B still inside: eager), B leaves (the stance before A: default)
    seen = {}
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with compiled_code_eager():
            a_in.set()
            b_in.wait()
            seen["a inside"] = _stance()
        a_out.set()

    def b():
        a_in.wait()
        with compiled_code_eager():
            b_in.set()
            a_out.wait()
            seen["b inside, a gone"] = _stance()
        seen["b gone"] = _stance()

    assert _stance() == "default"
    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a inside": "force_eager", "b inside, a gone": "force_eager", "b gone": "default"}
    assert _stance() == "default"


def test_the_stance_is_restored_after_an_error_inside():
    try:
        with compiled_code_eager():
            raise KeyError("inside")
    except KeyError:
        pass
    assert _stance() == "default"


def test_compiled_parts_are_found_in_each_form_torch_offers():
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not has_compiled_parts(plain)
    assert has_compiled_parts(torch.nn.Sequential(torch.compile(torch.nn.Linear(2, 2))))  # OptimizedModule
    in_place = torch.nn.Sequential(torch.nn.Linear(2, 2))
    in_place[0].compile()  # module.compile()
    assert has_compiled_parts(in_place)

    class Decorated(torch.nn.Linear):  # a @torch.compile method, as LaViDa-Dream's layers
        forward = torch.compile(torch.nn.Linear.forward)

    assert has_compiled_parts(torch.nn.Sequential(Decorated(2, 2)))


def test_a_model_the_user_compiled_is_explained_as_the_same_model_uncompiled():
    eager, proc = tiny_llada_v(seed=0, layers=3)
    compiled, _ = tiny_llada_v(seed=0, layers=3)
    for layer in compiled.model.layers:
        layer.compile()
    want = Explainer(eager, proc).explain(IMAGE, response="a red circle")
    stances = []
    hook = compiled.model.layers[2].register_forward_hook(lambda m, i, o: stances.append(_stance()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the batched backward ran: no fallback
            got = Explainer(compiled, proc).explain(IMAGE, response="a red circle")
    finally:
        hook.remove()
    assert stances and set(stances) == {"force_eager"} and _stance() == "default"
    torch.testing.assert_close(got.raw_maps, want.raw_maps, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.maps, want.maps, atol=1e-5, rtol=0)
