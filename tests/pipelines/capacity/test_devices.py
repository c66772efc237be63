"""Cluster shapes: parsed from NODESxGPUSxDEVICE, read from Ray's node list, and refused with one message."""

from __future__ import annotations

import pytest

from pipelines.capacity.devices import DEVICES, device, from_ray_nodes, parse
from pipelines.errors import SpecError


def test_shapes_parse_into_nodes_of_known_devices():
    two = parse("2x8xH100-80GB")
    assert (len(two.nodes), two.total_gpus, two.most_gpus_per_node, two.device.name) == (2, 16, 8, "H100-80GB")
    one = parse("4xa100-40gb")
    assert (len(one.nodes), one.total_gpus, one.device.memory_gib) == (1, 4, 40.0)
    assert device("H100").name == "H100-80GB"  # Ray's accelerator_type name
    assert {"H100-80GB", "H200-141GB", "A100-40GB", "A100-80GB", "L4", "L40S", "A10G"} == set(DEVICES)
    assert all(d.source for d in DEVICES.values())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2x8xB300", "--cluster: unknown device 'B300'"),
        ("2x8xH10", "--cluster: unknown device 'H10' — did you mean 'H100'?"),
        ("eight H100s", "--cluster: 'eight H100s' is not a cluster shape; write NODESxGPUSxDEVICE, e.g. 2x8xH100-80GB"),
        ("0x8xH100", "--cluster: '0x8xH100' has no GPUs"),
    ],
)
def test_bad_shapes_are_one_message(spec, message):
    with pytest.raises(SpecError) as err:
        parse(spec)
    assert str(err.value).startswith(message), str(err.value)


def test_a_running_clusters_nodes_become_a_shape():
    nodes = [
        {"resources_total": {"CPU": 32.0, "GPU": 4.0, "accelerator_type:A10G": 1.0, "memory": 64 * 2**30}},
        {"resources_total": {"CPU": 8.0, "memory": 16 * 2**30}},
        {"resources_total": {"CPU": 8.0, "GPU": 1.0, "accelerator_type:B300": 1.0}},
    ]
    cluster = from_ray_nodes(nodes)
    assert (cluster.total_gpus, cluster.most_gpus_per_node, cluster.device.name) == (5, 4, "A10G")
    assert cluster.nodes[0].memory_gib == 64 and cluster.unknown == ("B300",)
    assert from_ray_nodes([{"resources_total": {"CPU": 2.0}}]).device is None
