"""Test doubles and emulator helpers, kept out of the shipped package.

``tests/`` is on ``sys.path`` (tests/conftest.py puts it there, and on the
``PYTHONPATH`` of every subprocess a test starts), so local workers and shims that
tests start import handlers and extensions by path: ``support.shim_doubles.echo_handler``,
``RHAILAMBDA_EXTENSIONS=support.shim_doubles:run_counter``.
"""
