"""Paper experiments. Each module exposes ``run(args) -> list[dict]`` of result records and
registers itself in :data:`EXPERIMENTS`; the CLI's ``distill reproduce NAME`` calls it."""
