"""How many thinking tokens a turn may use: the budgeter stage's interface, built-ins and registry."""

from thrifty.budgeter.base import Budgeter, BudgetRequest
from thrifty.budgeter.registry import BUDGETERS, build_budgeter

__all__ = ["BUDGETERS", "BudgetRequest", "Budgeter", "build_budgeter"]
