"""The paper, section by section: each table as a function, the paper's numbers, its claims and
their verdict rules, and the measures the claims read."""
