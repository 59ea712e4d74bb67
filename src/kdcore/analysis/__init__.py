"""Results stage: tidy run table (table), statistics (stats), figures (figures), LaTeX tables (latex),
paper-vs-reproduction comparison (compare). Each module is pure functions over pandas tables so that the
workflow can hash them separately (a plotting edit re-runs only figure jobs)."""
