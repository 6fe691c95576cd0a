"""register_adapter's arguments are checked when it is called (a class or predicate of another kind was
taken and failed at the first model as a raw TypeError; a name with spaces around it could never be forced);
the same class under the same name again (a notebook cell run twice) replaces its registration."""
import re

import pytest

from dcam.errors import InputError


def test_a_class_or_predicate_of_another_kind_is_refused_with_or_without_a_name(registry,
                                                                                  second_block_adapter):
    from dcam.probe import register_adapter
    from dcam.probe.adapters import ModelAdapter
    from dcam.testing import tiny_toy

    adapters, registered = registry
    before, names = list(adapters), dict(registered)
    SecondBlock = second_block_adapter()
    instance = SecondBlock(*tiny_toy())
    subclass = r"^cls must be a dcam\.probe\.ModelAdapter subclass \(the class itself\), got "
    for name in (None, "plain"):
        for cls, got in ((dict, "the class dict"), (instance, "an instance of SecondBlock"),
                         (ModelAdapter, "the class ModelAdapter")):
            with pytest.raises(InputError, match=subclass + got + "$"):
                register_adapter(lambda m: False, cls, name=name)
        with pytest.raises(InputError, match=r"^predicate must be a callable predicate\(model\) -> bool, got bool$"):
            register_adapter(True, SecondBlock, name=name)
    assert adapters == before and registered == names  # a refused one registers nothing


def test_a_name_with_whitespace_around_it_is_refused(registry, second_block_adapter):
    from dcam.probe import register_adapter

    adapters, registered = registry
    before = list(adapters)
    SecondBlock = second_block_adapter()
    for name in (" toy-b ", "toy-b\n", "\ttoy-b"):
        with pytest.raises(InputError, match=re.escape(f"name: {name!r} has whitespace around it; register it as "
                                                       "'toy-b'") + "$"):
            register_adapter(lambda m: False, SecondBlock, name=name)
    with pytest.raises(InputError, match=r"^name must be a non-empty string, got '  '$"):
        register_adapter(lambda m: False, SecondBlock, name="  ")
    assert adapters == before and "toy-b" not in registered and " toy-b " not in registered


def test_the_same_class_under_the_same_name_again_replaces_its_registration(registry, second_block_adapter):
    from dcam.probe import auto_adapter, register_adapter
    from dcam.testing import tiny_toy

    adapters, registered = registry
    n = len(adapters)
    model, processor = tiny_toy()
    SecondBlock = second_block_adapter()
    register_adapter(lambda m: False, SecondBlock, name="toy-a")
    assert type(auto_adapter(model, processor)).__name__ == "ShapesAdapter"  # its predicate matches nothing
    # the cell run again, its predicate edited: was refused as a taken name
    register_adapter(lambda m: m is model, SecondBlock, name="toy-a")
    assert len(adapters) == n + 1 and [cls for _, cls in adapters].count(SecondBlock) == 1
    assert registered["toy-a"] is SecondBlock
    assert type(auto_adapter(model, processor)) is SecondBlock  # the second predicate is the one asked
    with pytest.raises(InputError, match=r"^name: 'toy-a' is already the name of the registered adapter "
                                         r".*SecondBlock$"):  # another class under the name: refused as before
        register_adapter(lambda m: False, second_block_adapter(), name="toy-a")
    assert len(adapters) == n + 1 and registered["toy-a"] is SecondBlock
