"""The faas client: ``client.Client`` (asyncio) and the ``faas`` command line."""

from faas.client.client import Client, Run, pack_project

__all__ = ["Client", "Run", "pack_project"]
