"""Things registered by name: one helper refuses a taken name, names what exists on a
miss, and every registry of clab's is one of it."""

import pytest

from clab.errors import ClabError
from clab.registry import Registry


def test_a_second_entry_under_a_taken_name_is_refused():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ClabError, match="widget 'a' is registered twice"):
        reg.register("a")(2)
    assert reg["a"] == 1


def test_a_miss_is_one_line_naming_what_was_asked_and_what_exists():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    with pytest.raises(ClabError) as e:
        reg["c"]
    assert str(e.value) == "widget 'c' is not known (known: a, b)"
    assert list(reg) == ["b", "a"] and "a" in reg and reg.get("c") is None


def test_replaced_swaps_an_entry_for_the_block_only():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with reg.replaced("a", 5) as original:
        assert (original, reg["a"]) == (1, 5)
    assert reg["a"] == 1


def test_every_registry_of_clab_is_one_and_refuses_a_taken_name():
    from clab.data.sft.replay import STRATEGIES
    from clab.evaluation.scorers import SCORERS
    from clab.evaluation.scorers.answer_loss import MATCHES
    from clab.plotting.registry import PAGE_KINDS, load_registrations
    from clab.training.schedule import PLANNERS
    from clab.training.sparse import SELECTORS

    load_registrations()
    registries = {
        "scorer": (SCORERS, "answer_loss"),
        "answer match": (MATCHES, "boxed"),
        "replay strategy": (STRATEGIES, "difficulty_hard"),
        "K-1 rule": (SELECTORS, "fraction"),
        "page kind": (PAGE_KINDS, "replay-mixing"),
        "training kind": (PLANNERS, "k1-lm"),
    }
    for what, (reg, name) in registries.items():
        assert isinstance(reg, Registry) and reg.what == what
        with pytest.raises(ClabError, match="registered twice"):
            reg.add(name, reg[name])
