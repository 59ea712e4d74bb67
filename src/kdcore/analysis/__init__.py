"""Results stage: tidy run tables (table), statistics (stats), figures (figures), LaTeX tables (latex),
paper-vs-reproduction comparison (compare), and the list of outputs with the tables each reads (outputs).
Each module is pure functions over pandas tables so that the workflow can hash them separately (a plotting
edit re-runs only figure jobs)."""
