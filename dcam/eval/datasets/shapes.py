"""The bundled grounded-shapes split as an evaluation set: colour and shape
words are object words, "a"/"and" function words."""
from __future__ import annotations

import numpy as np

from .base import EvalDataset, EvalRecord, make_record

class ShapesEval(EvalDataset):
    """The bundled grounded-shapes split (:class:`dcam.zoo.data.ShapesDataset`)."""

    kind = "shapes"

    def __init__(self, split: str = "test", size: int = 200, image_size: int = 64, base_seed: int = 0):
        super().__init__(f"shapes-{split}")
        from ...zoo.data import ShapesDataset

        self.ds = ShapesDataset(split=split, size=size, image_size=image_size, base_seed=base_seed)
        self.split = split

    def __len__(self) -> int:
        return len(self.ds)

    def entry_id(self, i: int) -> str:
        return f"{self.split}-{i}"

    def load(self, i: int) -> EvalRecord:
        s = self.ds[i]
        labels = [(int(l),) if int(l) > 0 else () for l in s.word_labels]
        rec = make_record(self.entry_id(i), s.image.convert("RGB"), s.caption, list(s.words),
                      np.asarray(s.mask, dtype=np.int64), labels)
        # in the shapes set every unlabelled word is a function word
        rec.function = [not labs for labs in rec.word_labels]
        return rec


def load_shapes(split: str = "test", size: int = 200, image_size: int = 64) -> ShapesEval:
    """The grounded-shapes ``split`` with ``size`` scenes of ``image_size`` px."""
    return ShapesEval(split=split, size=size, image_size=image_size)
