"""
Caxton's tests.
"""
