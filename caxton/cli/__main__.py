"""
C{python -m caxton.cli}: the same as the C{caxton} console script.
"""

from caxton.cli.main import run

run()
