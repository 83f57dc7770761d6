"""The data layer (data/, s3, latent/) has no import cycles, function-level imports included.

A cycle there once ran data/cache -> data/datasets -> s3 -> data/cache (s3 took cache_dir from
data/cache); cache_dir now lives in fileio. grimp, which import-linter uses, reads every import
statement of the package, also those inside functions.
"""

import grimp

DATA_LAYER = ("auditai_ops.data", "auditai_ops.s3", "auditai_ops.latent")


def _in_layer(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in DATA_LAYER)


def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """For each data-layer module M and each module N it imports, the chain N -> ... -> M back to M when one exists (through any module)."""
    cycles = []
    for module in sorted(m for m in graph.modules if _in_layer(m)):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module) if imported in graph.modules else None
            if chain:
                cycles.append((module, *chain))
    return cycles


def test_the_data_layer_has_no_import_cycle() -> None:
    graph = grimp.build_graph("auditai_ops", cache_dir=None)
    assert "auditai_ops.s3" in graph.modules and "auditai_ops.data.cache" in graph.modules
    assert not graph.chain_exists(importer="auditai_ops.s3", imported="auditai_ops.data.cache")
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_the_old_cycle() -> None:
    """The check itself: on a graph with the old imports it reports data/cache -> data/datasets -> s3 -> data/cache."""
    graph = grimp.ImportGraph()
    for importer, imported in [
        ("auditai_ops.data.cache", "auditai_ops.data.datasets"),
        ("auditai_ops.data.datasets", "auditai_ops.s3"),
        ("auditai_ops.s3", "auditai_ops.data.cache"),
        ("auditai_ops.s3", "auditai_ops.fileio"),
    ]:
        graph.add_import(importer=importer, imported=imported)
    assert ("auditai_ops.data.cache", "auditai_ops.data.datasets", "auditai_ops.s3", "auditai_ops.data.cache") in import_cycles(graph)
    graph.remove_import(importer="auditai_ops.s3", imported="auditai_ops.data.cache")
    assert import_cycles(graph) == []
