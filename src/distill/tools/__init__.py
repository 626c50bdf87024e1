"""Tools around trained models: export, compare, bench, plots."""
