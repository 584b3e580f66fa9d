"""The paper's claims in miniature (`vitkit reproduce`): studies, verdict rules, report."""
from vitkit.reproduce.run import reproduce, select

__all__ = ["reproduce", "select"]
