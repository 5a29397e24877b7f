"""Pure decisions of the operator: a gathered snapshot in, a decision with a human reason out.

Nothing here does I/O or reads the clock; handlers gather, call these, and apply the result.
"""
