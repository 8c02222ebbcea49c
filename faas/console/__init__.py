"""The web console's built files (``static/``), served by the scheduler at ``/console/``.

Built from ``console/`` at the repository's root with ``make console``; shipped as they
are, so installing faas needs no Node.js.
"""
