"""dcam.testing.grid_order: a grid given as (columns, rows), or positions listed column by column, hold as
many tokens as the right ones (no count tells them apart; the maps came out transposed without a word), so
the check asks the model. docs/FAMILIES.md's MyDMLLM embeds each 4-pixel patch by itself (a convolution, no
position embedding): at block 0 the state of an image token changes only where its own patch does. With
an image already at the model's size (no resampling across the halves), inverting the left half changes
exactly the left half of the columns: read in the right order, the left-right contrast
(first half's mean - last half's) / mean is (m - 0) / (m / 2) = 2, and the top half's top-bottom one 2
too: a score of 4, whatever the weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from dcam.testing.grid_order import check_grid_order, grid_order_scores


@pytest.fixture
def adapters(documented_adapter):
    """(adapter classes by name, the model): the documented 8x8 one, a 6x8 one (24x32-pixel input), the
    6x8 one giving its grid as (8, 6), and the 8x8 one listing its positions column by column."""
    from dcam.probe import Prepared
    from dcam.probe.adapters import load_image

    My, model, _ = documented_adapter()

    class Wide(My):
        grid = (6, 8)

        def prepare(self, image, prompt=None, response_ids=None, response_length=None):
            img = load_image(image).convert("RGB").resize((32, 24))
            pix = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            prompt_ids = [1] + [self.image_token_id] * 48 + [5, 6]
            resp = list(response_ids) if response_ids is not None else [self.mask_token_id] * (response_length or 8)
            ids = torch.tensor([prompt_ids + resp])
            return Prepared(input_ids=ids, model_inputs={"pixel_values": pix}, response_start=len(prompt_ids),
                            response_length=len(resp), image_positions=self.locate(ids, self.grid),
                            grid=self.grid, image=load_image(image), prompt=prompt)

    class Swapped(Wide):
        grid = (8, 6)

    class ColumnOrder(My):
        def prepare(self, *a, **k):
            p = super().prepare(*a, **k)
            p.image_positions = p.image_positions.reshape(8, 8).T.reshape(-1).clone()
            return p
    torch.manual_seed(0)
    return {"My": My, "Wide": Wide, "Swapped": Swapped, "ColumnOrder": ColumnOrder}, model


def _noise(w, h):
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_right_grid_scores_4_and_passes(adapters):
    classes, model = adapters
    for name, size, grid in (("My", (32, 32), (8, 8)), ("Wide", (32, 24), (6, 8))):
        adapter = classes[name](model)
        scores = grid_order_scores(adapter, _noise(*size))
        assert scores["grid"] == pytest.approx(4, abs=1e-9)
        assert scores["columns"] < 4 and (grid[0] == grid[1] or scores["swapped"] < 4)
        assert check_grid_order(adapter, _noise(*size)) == grid
    # the default image (448x336 noise, resampled to the model's size) is enough to pass it too
    assert check_grid_order(classes["Wide"](model)) == (6, 8)


def test_a_swapped_grid_or_column_order_is_caught(adapters):
    classes, model = adapters
    swapped = classes["Swapped"](model)
    scores = grid_order_scores(swapped, _noise(32, 24))
    assert scores["swapped"] == pytest.approx(4, abs=1e-9) and scores["grid"] < 4  # (8, 6) for 6 rows of 8
    with pytest.raises(AssertionError, match=r"^Swapped: the image tokens read as its 8x6 grid place the changed "
                                             r"half of the image worse than read swapped \(grid "):
        check_grid_order(swapped, _noise(32, 24))
    columns = classes["ColumnOrder"](model)
    assert grid_order_scores(columns, _noise(32, 32))["columns"] == pytest.approx(4, abs=1e-9)
    with pytest.raises(AssertionError, match=r"^ColumnOrder: .* worse than read columns \("):
        check_grid_order(columns, _noise(32, 32))
    # dcam itself accepts both (the same count of tokens): only this check, run by the adapter's author, says so
    import dcam

    assert dcam.Explainer(adapter=swapped).explain(_noise(32, 24), response="10 11").maps.shape == (2, 8, 6)
