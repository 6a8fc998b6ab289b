"""Reports: a study's runs as the paper's tables (Markdown / LaTeX / CSV / JSON), its claims checked, and its figures."""
