"""The measurement scores a generated caption's words against the objects
they name: the reference labels when the caption is the reference, else each
"<colour> <shape>" pair that names exactly one object."""
import numpy as np
from PIL import Image

from dcam.trajectory.report import object_labels
from dcam.zoo.data import Sample


def sample():
    objects = [dict(colour="red", shape="circle", label=1), dict(colour="blue", shape="square", label=2),
               dict(colour="blue", shape="circle", label=3)]
    caption = "a red circle and a blue square and a blue circle"
    return Sample(image=Image.new("RGB", (8, 8)), caption=caption, words=caption.split(),
                  word_labels=[0, 1, 1, 0, 0, 2, 2, 0, 0, 3, 3], mask=np.zeros((8, 8), np.int64), objects=objects)


def test_the_reference_caption_keeps_its_labels():
    s = sample()
    assert object_labels(s, s.words) == {1: 1, 2: 1, 5: 2, 6: 2, 9: 3, 10: 3}


def test_a_different_caption_is_aligned_by_its_phrases():
    s = sample()
    # order changed, one phrase names no object of the image (a red square), one word left over
    words = "a blue circle and a red square and a red circle blue".split()
    assert object_labels(s, words) == {1: 3, 2: 3, 9: 1, 10: 1}
