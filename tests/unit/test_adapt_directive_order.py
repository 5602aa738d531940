"""Directive ordering, Go-compatible stable sorting and route assembly
(config/adapt/directive_order.py)."""

from __future__ import annotations

import random

import pytest

from config.adapt.directive_order import (
    DEFAULT_DIRECTIVE_ORDER,
    build_subroute,
    consolidate_routes,
    go_stable_sort,
    reorder,
    sort_routes,
)
from config.adapt.helper import ConfigValue, GroupCounter, JSONDict
from config.errors import ConfigError


def route(directive: str, path: str | None = None, name: str = "") -> ConfigValue:
    value: JSONDict = {"handle": [{"handler": "x", "name": name or directive}]}
    if path is not None:
        value["match"] = [{"path": [path]}]
    return ConfigValue("route", value, directive)


@pytest.mark.parametrize("size", [0, 1, 5, 19, 20, 21, 45, 130])
def test_go_stable_sort_is_a_stable_sort_for_consistent_orders(size: int) -> None:
    rng = random.Random(size)
    items = [(rng.randint(0, 6), i) for i in range(size)]
    go_stable_sort(items, lambda a, b: a[0] < b[0])
    assert items == sorted(items, key=lambda t: t[0])


def test_reorder_positions() -> None:
    order = ["a", "b", "c"]
    assert reorder(order, "c", "first", None) == ["c", "a", "b"]
    assert reorder(order, "a", "last", None) == ["b", "c", "a"]
    assert reorder(order, "c", "before", "b") == ["a", "c", "b"]
    assert reorder(order, "a", "after", "b") == ["b", "a", "c"]


def test_sort_routes_by_directive_then_path_length() -> None:
    values = [
        route("respond", None, "r-any"),
        route("respond", "/a*", "r-a"),
        route("header"),
        route("respond", "/abc", "r-abc"),
        route("respond", "/abc*", "r-abc*"),
    ]
    sort_routes(values, list(DEFAULT_DIRECTIVE_ORDER))
    names = [v.value["handle"][0]["name"] for v in values]
    # same trimmed path: the exact one first; otherwise longer first; no matcher last
    assert names == ["header", "r-abc", "r-abc*", "r-a", "r-any"]


def test_vars_sorts_least_specific_first() -> None:
    values = [route("vars", "/a", "specific"), route("vars", None, "all")]
    sort_routes(values, list(DEFAULT_DIRECTIVE_ORDER))
    assert [v.value["handle"][0]["name"] for v in values] == ["all", "specific"]


def test_consolidate_routes_merges_only_adjacent_equal_matchers() -> None:
    routes: list[JSONDict] = [
        {"handle": [{"handler": "a"}]},
        {"handle": [{"handler": "b"}]},
        {"match": [{"path": ["/x"]}], "handle": [{"handler": "c"}]},
        {"handle": [{"handler": "d"}]},
    ]
    merged = consolidate_routes(routes)
    assert [[h["handler"] for h in r["handle"]] for r in merged] == [["a", "b"], ["c"], ["d"]]
    assert routes[0]["handle"] == [{"handler": "a"}]  # input left untouched


def test_build_subroute_groups_mutually_exclusive_directives() -> None:
    counter = GroupCounter()
    values = [route("handle", "/a"), route("handle"), route("rewrite", "/r")]
    routes = build_subroute(values, counter, True, list(DEFAULT_DIRECTIVE_ORDER))
    groups = {r["handle"][0]["name"]: r.get("group") for r in routes}
    # keys are visited sorted (handle, rewrite, root): handle takes group0, rewrite group1
    assert groups == {"rewrite": "group1", "handle": "group0"}
    assert counter.n == 2


def test_build_subroute_rejects_unordered_directives() -> None:
    with pytest.raises(ConfigError, match="'bind' is not an ordered HTTP handler"):
        build_subroute([route("bind")], GroupCounter(), True, list(DEFAULT_DIRECTIVE_ORDER))
