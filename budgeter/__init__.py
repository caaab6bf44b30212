"""How many thinking tokens a turn may use: the budgeter stage's interface, built-ins and registry."""

from thrifty.budgeter.base import BudgetDecision, Budgeter, BudgetRequest
from thrifty.budgeter.registry import BUDGETERS, build_budgeter

__all__ = ["BUDGETERS", "BudgetDecision", "BudgetRequest", "Budgeter", "build_budgeter"]
