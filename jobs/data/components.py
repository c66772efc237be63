"""Connected components of a duplicate graph on a Ray cluster, and reduce-side joins, with groupby only.

Components use the alternating Large-Star / Small-Star algorithm (Kiveris et al. 2014, "Connected
Components in MapReduce and Beyond"). Each step is one Ray Data groupby on the edge list keyed by node, so
a node's neighbourhood is the largest thing any worker holds; no step collects the edges on one node.
Large-Star links every larger neighbour of v to the smallest node around v; Small-Star links v and its
smaller neighbours to the smallest of them. They converge, in O(log^2 n) rounds, to one star per
component centred on its smallest node (string order): that node is the component's deterministic survivor.

Joins are done the MapReduce way (union, then groupby on the key) because Ray Data's `Dataset.join`
needs polars, which llmctl does not depend on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

MAX_ROUNDS = 64  # Large/Small-Star needs O(log^2 n) rounds: 64 is never reached by a real graph


def _table(u: list[str], v: list[str], bad: list[int], size: list[int] | None = None) -> pa.Table:
    """Edge rows: `bad` marks a node whose neighbourhood is not final yet (on a self-loop row); `size` carries a
    root's component size on one of its rows, so the last round yields the cluster-size histogram for free."""
    import pyarrow as pa

    return pa.table({"u": pa.array(u, pa.string()), "v": pa.array(v, pa.string()), "bad": pa.array(bad, pa.int64()),
                     "size": pa.array(size if size is not None else [0] * len(u), pa.int64())})


def _both_directions(edges: pa.Table) -> pa.Table:
    """(u, v) edges -> (node, nbr) rows in both directions; self-loops (status rows) are dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    edges = edges.filter(pc.not_equal(edges["u"], edges["v"]))
    node = pa.concat_arrays([edges["u"].combine_chunks(), edges["v"].combine_chunks()])
    nbr = pa.concat_arrays([edges["v"].combine_chunks(), edges["u"].combine_chunks()])
    return pa.table({"node": node.cast(pa.string()), "nbr": nbr.cast(pa.string())})


def _neighbours(group: pa.Table) -> tuple[str, set[str]]:
    v = group["node"][0].as_py()
    return v, set(group["nbr"].to_pylist()) - {v}


def large_star(group: pa.Table) -> pa.Table:
    """Link each larger neighbour of v to m = min(v and its neighbours). Also reports whether v's
    neighbourhood is already final (v is a root, or a leaf with one smaller neighbour) as a self-loop row
    with bad=1 when it is not, so the driver can stop once a round finds nothing to do."""
    v, nbrs = _neighbours(group)
    m = min(nbrs | {v})
    larger = sorted(u for u in nbrs if u > v)
    smaller = len(nbrs) - len(larger)
    final = smaller == 0 or (smaller == 1 and not larger)
    u_col, v_col = [m] * len(larger), larger
    size = [0] * len(larger)
    if smaller == 0 and larger:
        size[0] = len(larger) + 1
    if not final:
        u_col, v_col, size = u_col + [v], v_col + [v], size + [0]
    return _table(u_col, v_col, [0] * len(larger) + ([] if final else [1]), size)


def small_star(group: pa.Table) -> pa.Table:
    """Link v and each smaller neighbour of v to m = min(v and its smaller neighbours)."""
    v, nbrs = _neighbours(group)
    members = {u for u in nbrs if u < v} | {v}
    m = min(members)
    others = sorted(members - {m})
    return _table([m] * len(others), others, [0] * len(others))


def _step(edges: ray.data.Dataset, fn, partitions: int) -> ray.data.Dataset:
    directed = edges.map_batches(_both_directions, batch_format="pyarrow")
    return directed.groupby("node", num_partitions=partitions).map_groups(fn, batch_format="pyarrow").materialize()


def connected_components(edges: ray.data.Dataset, partitions: int) -> tuple[ray.data.Dataset, int]:
    """Star edges (u=root, v=member, size) for every non-root node of the graph given by (u, v) edge rows, and
    the number of rounds it took. The root of each component is its smallest node; `size` is the component's
    size on one row per component, 0 elsewhere."""
    edges = edges.select_columns(["u", "v"]).map_batches(
        lambda t: t.append_column("bad", _zeros(len(t))).append_column("size", _zeros(len(t))), batch_format="pyarrow")
    for rounds in range(1, MAX_ROUNDS + 1):
        edges = _step(edges, large_star, partitions)
        if not (edges.sum("bad") or 0):
            return _drop_status(edges), rounds
        edges = _step(edges, small_star, partitions)
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")


def _zeros(n: int):
    import pyarrow as pa

    return pa.array([0] * n, pa.int64())


def _drop_status(edges: ray.data.Dataset) -> ray.data.Dataset:
    import pyarrow.compute as pc

    def keep(t: pa.Table) -> pa.Table:
        return t.filter(pc.not_equal(t["u"], t["v"])).select(["u", "v", "size"])

    return edges.map_batches(keep, batch_format="pyarrow")
