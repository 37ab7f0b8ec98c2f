"""A serving gateway leaves the objects of its start out of the cyclic GC's full
collections (`gateway.serve.settle_heap`): they live until it stops, and traversing them
was a ~20 ms pause of every session each time. Garbage made later is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import psycopg
import pytest

from gateway.devtools.harness import GatewayProcess
from gateway.serve import settle_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # (the rest of the suite runs with this process's usual GC)


def test_what_exists_is_frozen_and_later_cycles_are_still_collected(unfrozen: None) -> None:
    before = [Node() for _ in range(1000)]
    frozen = settle_heap()
    assert frozen >= len(before)
    # out of the generations a collection walks (other threads of this process may free
    # frozen objects meanwhile, so the count itself is not compared again)
    walked = {id(o) for o in gc.get_objects()}
    assert id(before[0]) not in walked and id(before[-1]) not in walked
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the cyclic GC can free
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_a_serving_gateway_has_settled_its_heap(gateway: GatewayProcess, token: str) -> None:
    start = gateway.wait_for_log(lambda d: d.get("event") == "gateway.start")
    # the modules, the compiled policy and the settings: tens of thousands of objects
    assert start["gc_frozen"] > 10_000
    with psycopg.connect(gateway.dsn("payments"), password=token, autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
