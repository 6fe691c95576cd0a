"""The grounding benchmark's pieces on generated scenes (fast; the bundled
model's figures are in test_grounding_bundled.py)."""
from dcam.eval.grounding import class_detector_maps, grounding_samples, object_word_success


def test_class_detector_maps_light_every_object_of_the_named_class():
    s = next(x for x in grounding_samples(20) if len({o["colour"] for o in x.objects}) < len(x.objects))
    idx = [i for i, l in enumerate(s.word_labels) if l > 0]
    maps = class_detector_maps(s, idx)
    for k, i in enumerate(idx):
        key = "colour" if k % 2 == 0 else "shape"  # captions name "<colour> <shape>" per object
        lit = {j + 1 for j, o in enumerate(s.objects) if o[key] == s.words[i]}
        assert int(s.word_labels[i]) in lit
        for label in range(1, len(s.objects) + 1):
            assert (maps[k][s.mask == label] == (1.0 if label in lit else 0.0)).all()
        assert (maps[k][s.mask == 0] == 0).all()
    # two objects of one colour: that colour's words tie on density, the larger object wins on mass
    ok = object_word_success(maps, idx, s.word_labels, s.mask)
    area = {l: int((s.mask == l).sum()) for l in range(1, len(s.objects) + 1)}
    for k, i in enumerate(idx[::2]):
        own = int(s.word_labels[i])
        rivals = [j + 1 for j, o in enumerate(s.objects) if o["colour"] == s.words[i] and j + 1 != own]
        assert ok[2 * k] == all(area[own] > area[r] for r in rivals)

