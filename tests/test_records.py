"""vortex.records: value classes that behave like frozen dataclasses."""

from __future__ import annotations

import copy
import inspect
import pickle
from pathlib import Path
from typing import ClassVar

import pytest

from vortex import records
from vortex.ops import BindMount
from vortex.records import FrozenInstanceError, field, record
from vortex.spec import ContainerSpec


@record
class Point:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "point"


@record
class Point3(Point):
    z: int = 0


@record(frozen=False)
class Counter:
    count: int = 0


def test_arguments_by_position_keyword_and_default() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, [])
    assert Point(1, 2).y == 2 and Point(x=1, y=3).y == 3
    assert Point(1, tags=["a"]).tags == ["a"]


def test_a_factory_gives_each_record_its_own_value() -> None:
    first, second = Point(1), Point(2)
    first.tags.append("a")
    assert second.tags == []


def test_class_variables_are_not_fields() -> None:
    assert [f.name for f in records.fields(Point)] == ["x", "y", "tags"]
    assert Point.kind == "point"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Point(), "missing required argument: 'x'"),  # type: ignore[call-arg]
        (lambda: Point(1, x=2), "multiple values for argument 'x'"),  # type: ignore[misc]
        (lambda: Point(1, colour="red"), "unexpected keyword argument 'colour'"),  # type: ignore[call-arg]
        (lambda: Point(1, 2, [], 4), "takes 3 arguments, 4 were given"),  # type: ignore[call-arg]
    ],
)
def test_wrong_arguments_are_a_type_error(call: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()  # type: ignore[operator]


def test_frozen_records_refuse_changes() -> None:
    point = Point(1)
    with pytest.raises(FrozenInstanceError, match="cannot assign to 'x': a Point is immutable"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError is one, as with dataclasses
        del point.y
    assert point.x == 1


def test_equality_and_hash_follow_the_fields_and_the_class() -> None:
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != Point3(1, 2)  # a subclass is another kind of value
    assert Point(1, 2) != (1, 2, [])  # type: ignore[comparison-overlap]
    assert hash(BindMount("/a", "/b")) == hash(BindMount("/a", "/b"))
    assert len({BindMount("/a", "/b"), BindMount("/a", "/b"), BindMount("/a", "/c")}) == 2


def test_a_mutable_record_can_change_and_is_unhashable() -> None:
    counter = Counter()
    counter.count += 1
    assert counter == Counter(1)
    with pytest.raises(TypeError, match="unhashable"):
        hash(counter)


def test_repr_shows_the_fields() -> None:
    assert repr(Point3(1, tags=["a"], z=2)) == "Point3(x=1, y=0, tags=['a'], z=2)"


def test_fields_are_inherited_in_order() -> None:
    assert [f.name for f in records.fields(Point3(1))] == ["x", "y", "tags", "z"]
    assert Point3.__match_args__ == ("x", "y", "tags", "z")


def test_match_by_position() -> None:
    match Point(4, 5):
        case Point(x, y):
            assert (x, y) == (4, 5)
        case _:
            pytest.fail("a Point did not match its own pattern")


def test_replace_copies_with_changes() -> None:
    point = Point(1, 2, ["a"])
    moved = records.replace(point, y=9)
    assert (moved.x, moved.y, moved.tags) == (1, 9, ["a"]) and point.y == 2
    with pytest.raises(TypeError, match="Point has no field 'w'"):
        records.replace(point, w=1)


def test_as_dict_and_is_record() -> None:
    assert records.as_dict(Point(1, 2)) == {"x": 1, "y": 2, "tags": []}
    assert records.is_record(Point) and records.is_record(Point(1))
    assert not records.is_record(object())
    with pytest.raises(TypeError, match="is not a record"):
        records.fields(object())


def test_pickle_and_copy_round_trip() -> None:
    # The fork helper receives the init's plan pickled.
    spec = ContainerSpec(rootfs=Path("/r"), command=["/bin/true"], env={"A": "1"})
    for clone in (pickle.loads(pickle.dumps(spec)), copy.deepcopy(spec), copy.copy(spec)):
        assert clone == spec
        with pytest.raises(FrozenInstanceError):
            clone.rootfs = Path("/other")  # type: ignore[misc]


def test_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="field 'b' without a default follows one with a default"):

        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_field_takes_one_kind_of_default() -> None:
    with pytest.raises(TypeError, match="a default or a default_factory, not both"):
        field(default=1, default_factory=int)


def test_the_constructor_signature_is_shown_by_inspect_and_help() -> None:
    assert str(inspect.signature(Point3)) == (
        "(x: 'int', y: 'int' = 0, tags: 'list[str]' = <factory>, z: 'int' = 0) -> None"
    )
    with pytest.raises(AttributeError):
        Point(1).__signature__  # noqa: B018  (as for any instance: it is not callable)
