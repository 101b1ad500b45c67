"""The `digitgen` command: the composition root that puts the engine, the
service and the benches together (engine/ and app/ never import it)."""
