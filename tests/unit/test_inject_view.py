"""How `atlas inject show` reads a fact's guards: its own slots apart from its guards' pairs, and
what each guard shuts of the namesake positions its slot opens on."""

from __future__ import annotations

from atlas.cli.inject_view import describe
from atlas.db.injections import InjectedFact, InjectionRecord


def _record(guards: list[dict]) -> InjectionRecord:
    slots = [[10, 1536]] + [[g["layer"], g["index"]] for g in guards if g["index"] is not None]
    info = {"slots": slots, "guards": guards, "replaces": ["Washington"], "layer_source": "subject"}
    fact = InjectedFact(0, "cf-1", "P36", "Egbert Benson", "Albany", ["p"], ["h"], info)
    return InjectionRecord(1, "r", 1, 1, "applied", [10], {}, 1536, 1540, "a" * 64, "b" * 64, {}, None, None, 1, [fact])


def test_show_names_a_guard_and_what_it_shuts() -> None:
    shown = describe(_record([{"layer": 10, "opened": 14, "cancelled": 12, "separable": False, "index": 1538}]))
    assert "slots L10.1536+1537 (subject)" in shown
    assert "guard L10.1538+1539 shuts 12/14 namesake positions;" in shown + ";"  # recorded before its share
    share = {"layer": 10, "opened": 14, "cancelled": 12, "separable": False, "share": 0.459, "index": 1538}
    assert "guard L10.1538+1539 shuts 12/14 namesake positions, -0.46 v" in describe(_record([share]))


def test_show_says_where_no_guard_could_be_built_and_is_silent_without_namesakes() -> None:
    shown = describe(_record([{"layer": 10, "opened": 3, "cancelled": 0, "separable": False, "index": None}]))
    assert "slot opens on 3 namesake positions, no guard parts them" in shown and "guard L" not in shown
    quiet = describe(_record([{"layer": 10, "opened": 0, "cancelled": 0, "separable": True, "index": None}]))
    assert "namesake" not in quiet


def test_show_gives_held_out_generalisation_where_the_model_knew_the_replaced_object() -> None:
    rec = _record([])
    rec.audit.update({"generalisation": 0.46, "heldout_known": 18, "generalisation_where_known": 13 / 18})
    assert "46.0%" in describe(rec) and "72.2% of the 18 the model answered with the replaced object" in describe(rec)
    rec.audit.update({"heldout_known": None, "generalisation_where_known": None})
    assert "replaced object" not in describe(rec)
