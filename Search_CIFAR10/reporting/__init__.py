"""What the project shows a user about finished runs: the one run-directory reader (runs), the report
(report, document), the table of runs (run_table), the λ sweep across MCUs (sweep), and the figures
(figures, one module each)."""
