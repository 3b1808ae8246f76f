"""The experiment plan: the cells a config asks for, their order, and which split each cell fits and scores on."""

from __future__ import annotations

from harness.data import Example, Split
from harness.plan import CellKey, Plan, PlannedTask, TransferPlan, fitted_split, scored_split, split_sizes, train_sizes
from harness.run_folder import SplitRecord
from harness.task import SplitSizes


def test_cells_in_run_order_by_hand() -> None:
    transfer = TransferPlan({"a": ["b"]}, ["t"], across_models=["t"])
    plan = Plan(["m1", "m2"], [PlannedTask("a", (2, 4)), PlannedTask("b")], [0], ["base", "t"], transfer)
    fits = [CellKey(m, "a", 0, c, n) for m in ("m1", "m2") for n in (2, 4) for c in ("base", "t")]
    fits = [k for m in ("m1", "m2") for k in [*(x for x in fits if x.model == m),
                                               *(CellKey(m, "b", 0, c) for c in ("base", "t"))]]
    # each source of t, in run order: a at 2 and 4 goes to task b by its own model, then to a and b by the other
    # model; b (no task target) goes to the other model only
    moves = []
    for m, other in (("m1", "m2"), ("m2", "m1")):
        moves += [CellKey(m, "a", 0, "t", n, target_task=tt, target_model=tm) for n in (2, 4)
                  for tm, tt in ((None, "b"), (other, None), (other, "b"))]
        moves.append(CellKey(m, "b", 0, "t", target_model=other))
    assert plan.cells() == fits + moves
    assert [len(w) for w in Plan.waves(plan.cells())] == [len(fits), len(moves)]
    assert all(not k.is_transfer for k in Plan.waves(plan.cells())[0])


def test_only_some_conditions_leaves_out_the_others_transfers() -> None:
    plan = Plan(["m"], [PlannedTask("a")], [0, 1], ["base", "t"], TransferPlan({"a": ["b"]}, ["t"]))
    assert plan.cells(["base"]) == [CellKey("m", "a", s, "base") for s in (0, 1)]
    assert [k for k in plan.cells(["t"]) if k.is_transfer] == [CellKey("m", "a", s, "t", target_task="b")
                                                              for s in (0, 1)]


def test_sizes_of_a_curve() -> None:
    default = SplitSizes(train=10, dev=5, test=None)
    assert train_sizes({"train": [8, 2, 4]}) == [2, 4, 8] and train_sizes({"train": 8}) is None
    assert split_sizes({"train": [8, 2, 4]}, default) == SplitSizes(train=8, dev=5, test=None)
    assert split_sizes(None, default) is default


def test_a_cells_split_is_the_same_on_examples_and_on_the_record() -> None:
    ex = [Example(id=f"e{i}", contexts=(f"c{i}",), continuations=("x",), gold=0) for i in range(9)]
    whole = Split(train=tuple(ex[:5]), dev=tuple(ex[5:7]), test=tuple(ex[7:]))
    record = SplitRecord.of("a", 0, whole, [2, 5])
    for key in (CellKey("m", "a", 0, "c"), CellKey("m", "a", 0, "c", 2), CellKey("m", "a", 0, "c", 2, "b")):
        fitted = fitted_split(whole, key)
        assert fitted_split(record, key).hash == fitted.hash  # one rule, two representations
        assert [e.id for e in fitted.train] == [e.id for e in ex[:key.train_size or 5]]
        assert fitted.dev == whole.dev and fitted.test == whole.test  # every size scores the same examples
    transfer = CellKey("m", "a", 0, "c", 2, target_task="b")
    assert scored_split(whole, transfer) is whole  # a transfer scores the target's whole split
    own = CellKey("m", "a", 0, "c", 2)
    assert scored_split(whole, own).hash == fitted_split(whole, own).hash
