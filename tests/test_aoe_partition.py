"""The SGAT partitioning rule and subgraph functions."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from aoe_full.graph_capture import capture, trace
from aoe_full.measure import relative_error
from aoe_full.partition import build_function, get_path, partition, structure_hash
from aoe_full.sample_models import small_convnet, small_transformer


def test_convnet_partition_follows_blocks():
    model = small_convnet()
    graph, _ = trace(model)
    subs = partition(graph, model)
    owners = [s.owner for s in subs]
    assert owners == ["blocks.0", None, "blocks.2", None, "blocks.4", None, None]
    assert [len(s.nodes) for s in subs[::2][:3]] == [3, 3, 3]  # conv, bn, relu
    assert [n.name for s in subs for n in s.nodes] == [
        n.name for n in graph.nodes if n.op.startswith("call_")]


def test_loose_layers_cut_before_anchors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    graph, _ = trace(model)
    subs = partition(graph, model)
    assert [[str(n.target) for n in s.nodes] for s in subs] == [
        ["0", "1", "2"], ["3", "4", "5"], ["6"]]


def test_identical_blocks_hash_alike_and_differ_from_others():
    model = small_transformer()
    graph, _ = trace(model)
    subs = partition(graph, model)
    assert [s.owner for s in subs] == ["blocks.0", "blocks.1", None, None]
    hashes = [structure_hash(s, model) for s in subs]
    assert hashes[0] == hashes[1] and len(set(hashes)) == 3
    wider = copy.deepcopy(model)
    wider.blocks[1].fc1 = nn.Linear(64, 128)
    wider.blocks[1].fc2 = nn.Linear(128, 64)
    g2, _ = trace(wider)
    s2 = partition(g2, wider)
    assert structure_hash(s2[0], wider) == hashes[0] != structure_hash(s2[1], wider)


def test_subgraph_function_reproduces_the_block():
    model = small_transformer().train()
    x = torch.randn(2, 8, 64)
    cap = capture(model, [x], ["x"], grad=True)
    sub = partition(cap.graph, model)[0]
    fn = build_function(sub)
    refs = tuple(get_path(model, p) for p in sub.refs)
    inputs = tuple(cap.values[n.name] for n in sub.inputs)
    out = fn(*refs, *inputs)
    expected = tuple(cap.values[n.name] for n in sub.outputs)
    assert relative_error(tuple(o.detach() for o in out), expected) <= 1.0
